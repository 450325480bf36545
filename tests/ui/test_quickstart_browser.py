"""The quickstart in JupyterLab, in Debian's headless Chromium driven by Playwright.

JupyterLab started as the README's first command starts it (``lmjupyter lab``: uvloop's
event loop; 127.0.0.1, a free port, a token, a temp root dir with the lmjupyter server
extension) opens notebooks/quickstart.ipynb; every cell but the last (the undeploy) runs
as "Run All Above Selected Cell" would run them; the control panel must then show the
model ready with its 2 ranks, and a screenshot goes to test-artifacts/. Then the last
cell undeploys the model and the panel, refreshing itself, must show it gone.

Needs /usr/bin/chromium (Playwright never downloads a browser here); skips otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from browser import require_browser  # tests/ui/browser.py; the page fixture is in conftest.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jupyter"))  # the shared Jupyter test harness
from jupyterproc import JupyterServer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
RUN_TIMEOUT_MS = 240_000


@pytest.fixture
def lab(tmp_path):
    require_browser()
    server = JupyterServer(
        tmp_path, app="lmjupyter.lab",
        args=(f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--LabApp.expose_app_in_browser=True",
              "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url="),
        config_files={"labconfig/page_config.json": json.dumps(
            {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})})
    shutil.copy(REPO / "notebooks" / "quickstart.ipynb", server.root / "quickstart.ipynb")
    try:
        yield server
    finally:
        try:  # leave no worker group behind, whatever happened
            for model in server.lmserve("GET", "models", timeout=30).json().get("models", []):
                server.lmserve("DELETE", f"models/{model['name']}", timeout=60)
        finally:
            server.stop()
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(server.log_path, ARTIFACTS / "quickstart-jupyterlab.log")


def _notebook_js(page, body: str, arg=None):
    """Run JS with ``nb`` bound to the open notebook panel (window.jupyterapp is exposed for tests)."""
    return page.evaluate(
        "([body, arg]) => { const nb = window.jupyterapp.shell.currentWidget;"
        " return new Function('nb', 'app', 'arg', body)(nb, window.jupyterapp, arg); }", [body, arg])


def _wait_kernel_idle(page, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = _notebook_js(page, "const k = nb && nb.sessionContext && nb.sessionContext.session"
                                    " && nb.sessionContext.session.kernel; return k ? k.status : null;")
        if status == "idle":
            return
        time.sleep(0.25)
    raise AssertionError(f"the kernel did not become idle (last status {status})")


def test_quickstart_runs_and_the_panel_shows_the_model(lab, page):
    ARTIFACTS.mkdir(exist_ok=True)
    assert lab.lmserve("GET", "health").json()["loop"] == "uvloop"  # kernel, websockets and UI on uvloop
    page.goto(f"{lab.url}lab/tree/quickstart.ipynb?token={lab.token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.content", timeout=60_000)
    _wait_kernel_idle(page, 90)

    # Select the last cell (the undeploy) and run everything above it.
    count = _notebook_js(page, "const n = nb.content.widgets.length; nb.content.activeCellIndex = n - 1;"
                               " return n;")
    assert "%lmserve undeploy" in _notebook_js(page, "return nb.content.activeCell.model.sharedModel.source;")
    _notebook_js(page, "return app.commands.execute('notebook:run-all-above');")

    panel = page.locator(".lmj-panel")
    panel.wait_for(timeout=RUN_TIMEOUT_MS)
    ready = panel.locator(".lmj-panel-models td[data-state='ready']")
    ready.first.wait_for(timeout=60_000)
    rows = panel.locator(".lmj-panel-models tbody tr")
    assert rows.count() == 1
    assert rows.first.locator("td").first.inner_text() == "shout"
    assert "2/2" in rows.first.inner_text()  # ranks ready, after scaling to one worker of 2 ranks
    ranks = panel.locator(".lmj-panel-workers tbody tr")
    assert ranks.count() == 2
    _wait_kernel_idle(page, 60)

    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    texts = [errors.nth(i).inner_text() for i in range(errors.count())]
    assert not [t for t in texts if "UsageError" in t or "Traceback" in t], texts
    panel.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(4_500)  # two refreshes after the traffic cell: the plot has points
    page.screenshot(path=str(ARTIFACTS / "quickstart-panel.png"), full_page=False)

    # The last cell undeploys; the panel refreshes itself while shown and must notice.
    _notebook_js(page, "nb.content.activeCellIndex = arg; return app.commands.execute('notebook:run-cell');",
                 count - 1)
    panel.locator(".lmj-panel-models", has_text="no models deployed").wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "quickstart-panel-after-undeploy.png"), full_page=False)
    assert lab.lmserve("GET", "models").json()["models"] == []
