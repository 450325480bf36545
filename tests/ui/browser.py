"""The browser both UI tests drive: Debian's Chromium through Playwright (never a downloaded browser)."""
import os

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_browser() -> None:
    """Skip, saying why, where the browser or Playwright is missing (CI installs both)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no chromium at {CHROMIUM} (CI installs Debian's chromium package)")
    pytest.importorskip("playwright.sync_api")
