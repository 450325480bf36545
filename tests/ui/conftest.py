"""The ``page`` fixture both UI tests use."""
import pytest

from browser import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture
def page():
    """A fresh page; ``page.console_errors`` collects uncaught page errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.console_errors = errors
        try:
            yield page
        finally:
            context.close()
            browser.close()
