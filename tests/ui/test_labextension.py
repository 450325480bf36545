"""The "LM Serve" JupyterLab panel, driven in a real browser against a real JupyterLab.

Starts JupyterLab (127.0.0.1, a free port, a token, a non-root base_url, a temp
root dir) with the lmjupyter server extension, opens the panel through the
command palette, deploys a 2-rank CPU model over REST and watches the panel:
the model becomes ready with both ranks; it is scaled to 2 workers from the
panel's dialog; its logs open in a tab; it is undeployed from the panel and
leaves. Screenshots go to test-artifacts/.

Needs Debian's chromium at /usr/bin/chromium (Playwright never downloads a
browser here), the built extension (lmjupyter/labextension/, from
`npm run build:prod` in labextension/ or any pip install), and the server
extension's REST routes; it skips, saying which is missing, otherwise.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmjupyter.procs import pid_alive
from browser import require_browser  # tests/ui/browser.py; the page fixture is in conftest.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jupyter"))  # the shared Jupyter test harness
from jupyterproc import wait_until_jupyter_answers  # noqa: E402
import requests

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
BUILT_EXTENSION = REPO / "lmjupyter" / "labextension"
EXTENSION_NAME = "lmjupyter-labextension"
ARTIFACTS = REPO / "test-artifacts"
BASE_URL = "/jl/"  # not "/": the panel must honour Jupyter's base_url
TOKEN = "ui-test-token"

HANDLER_SOURCE = "from lmjupyter.handlers import BaseHandler\nclass Echo(BaseHandler):\n    pass\n"

# The panel polls every 2 s; a change on the server must show within that plus
# one request and a render. The margin is for slow CI machines.
UPDATE_WITHIN_S = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _labextension_dirs(tmp: Path) -> list[str]:
    """Serve the extension built in this checkout ahead of any installed copy.

    JupyterLab looks for `<dir>/<npm name>/package.json`; the build output is
    named `lmjupyter/labextension`, so a link with the npm name points at it.
    """
    if (BUILT_EXTENSION / "package.json").exists():
        linkdir = tmp / "labextensions"
        linkdir.mkdir()
        (linkdir / EXTENSION_NAME).symlink_to(BUILT_EXTENSION, target_is_directory=True)
        return [str(linkdir)]
    from jupyter_core.paths import jupyter_path

    if any((Path(d) / EXTENSION_NAME / "package.json").exists() for d in jupyter_path("labextensions")):
        return []
    pytest.skip("the labextension is neither built (npm run build:prod in labextension/) nor installed")


class JupyterLab:
    """A `jupyter lab` subprocess with its own config, data, runtime and root dirs."""

    def __init__(self, tmp: Path):
        self.root = tmp / "root"
        self.root.mkdir()
        config_dir = tmp / "config"
        config_dir.mkdir()
        # Enable the server extension here rather than relying on the
        # jupyter-config file an install puts under sys.prefix.
        (config_dir / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"lmjupyter": True}}}))
        # No "Would you like to get notified about official Jupyter news?" toast.
        (config_dir / "labconfig").mkdir()
        (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}{BASE_URL}"
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.base_url={BASE_URL}",
            f"--ServerApp.root_dir={self.root}",
            f"--IdentityProvider.token={TOKEN}",
            f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.news_url=",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, to wait for its restore
            *(f"--LabApp.extra_labextensions_path={d}" for d in _labextension_dirs(tmp)),
        ]
        if os.geteuid() == 0:  # containers and CI runners
            cmd.append("--ServerApp.allow_root=True")
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(config_dir),
            "JUPYTER_DATA_DIR": str(tmp / "data"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = tmp / "jupyterlab.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {TOKEN}"
        self._wait_ready(timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self, timeout: float) -> None:
        wait_until_jupyter_answers(self, "jupyter lab", timeout)

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.session.request(method, self.url + "lmserve/api/" + path, timeout=120, **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture
def lab(tmp_path):
    require_browser()
    server = JupyterLab(tmp_path)
    try:
        health = server.api("GET", "health")
        if health.status_code == 404:
            pytest.skip("the lmserve REST routes are not mounted in Jupyter (server extension missing)")
        assert health.status_code == 200, health.text
        yield server
    finally:
        # Leave no worker group behind, whatever the test did.
        try:
            for model in server.api("GET", "models").json().get("models", []):
                server.api("DELETE", f"models/{model['name']}")
        except Exception:
            pass
        server.stop()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(server.log_path, ARTIFACTS / "labextension-jupyterlab.log")


def _run_command(page, label: str, until) -> None:
    """Runs a command through the command palette (Ctrl+Shift+C), as a user would,
    until the locator `until` is visible.

    The palette is modal and closes when something takes the focus, which a
    loaded machine does late (runs beside two busy cores saw it close between
    opening and typing), so a try that loses the palette is made again, as a
    user would.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    palette_input = page.locator(".lm-CommandPalette-input")
    for attempt in range(4):
        try:
            if not palette_input.is_visible():
                page.keyboard.press("Control+Shift+C")
            palette_input.fill(label, timeout=10_000)
            # Enter runs the palette's active item. A click on the item fails where
            # JupyterLab keeps re-rendering the palette (every command change does):
            # CI saw 30 s of "element was detached from the DOM, retrying".
            page.locator(".lm-CommandPalette-item.lm-mod-active", has_text=label).first.wait_for(
                timeout=10_000)
            palette_input.press("Enter", timeout=5_000)
            until.wait_for(state="visible", timeout=15_000)
            return
        except PlaywrightTimeout:
            if attempt == 3:
                raise


def _open_lab(lab, page):
    """Loads JupyterLab and opens the panel with its palette command."""
    page.goto(f"{lab.url}lab?token={TOKEN}")
    page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=60_000)
    page.locator(".jp-LabShell").wait_for()
    # JupyterLab restores the saved layout after start-up, and that hides a panel
    # opened before it (runs beside two busy cores saw it stay hidden); wait for it.
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=60_000)
    page.evaluate("() => window.jupyterapp.restored.then(() => true)")
    panel = page.locator("#lmserve-panel")
    _run_command(page, "LM Serve: open panel", until=panel)
    return panel


def test_panel_follows_deploy_scale_logs_undeploy(lab, page):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    (lab.root / "echo.py").write_text(HANDLER_SOURCE)

    panel = _open_lab(lab, page)
    expect(panel.locator(".jp-LmServe-status")).to_have_text("Live")
    expect(panel.locator(".jp-LmServe-empty")).to_be_visible(timeout=10_000)

    # Deploy over REST, as a notebook or script would.
    deploy = lab.api("POST", "models", json={
        "name": "echo",
        "handler": str(lab.root / "echo.py"),
        "config": {"minWorkers": 1, "maxWorkers": 2, "deviceType": "cpu",
                   "torchrun": {"nproc-per-node": 2}},
        "wait": True,
    })
    assert deploy.status_code == 201, deploy.text
    assert deploy.json()["state"] == "ready"
    deployed_at = time.monotonic()

    card = panel.locator('section.jp-LmServe-model[data-model="echo"]')
    expect(card).to_have_attribute("data-state", "ready", timeout=UPDATE_WITHIN_S * 1000)
    latency = time.monotonic() - deployed_at
    assert latency < UPDATE_WITHIN_S, f"panel showed the deploy after {latency:.1f}s"
    expect(card.locator("tr.jp-LmServe-rank")).to_have_count(2)
    rest_pids = sorted(r["pid"] for w in lab.api("GET", "models/echo").json()["workers"] for r in w["ranks"])
    shown_pids = sorted(int(p) for p in card.locator("tr.jp-LmServe-rank").evaluate_all(
        "rows => rows.map(r => r.dataset.pid)"))
    assert shown_pids == rest_pids
    expect(card.locator(".jp-LmServe-devices").first).to_have_text("CPU")
    page.screenshot(path=str(ARTIFACTS / "labextension-deployed.png"))

    # Scale from the panel: dialog, then the second worker's ranks appear.
    card.locator("button.jp-LmServe-scale").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog.locator(".jp-Dialog-header")).to_contain_text('Scale "echo"')
    dialog.locator("input.jp-LmServe-scaleInput").fill("2")
    dialog.locator("button.jp-mod-accept").click()
    expect(dialog).to_have_count(0)
    expect(card).to_have_attribute("data-workers", "2", timeout=60_000)
    expect(card.locator("tr.jp-LmServe-rank")).to_have_count(4, timeout=60_000)
    # The PUT has answered and both workers are ready.
    expect(card.locator(".jp-LmServe-pending")).to_have_count(0, timeout=120_000)
    expect(card.locator('.jp-LmServe-workerHead [data-state="ready"]')).to_have_count(
        2, timeout=UPDATE_WITHIN_S * 1000)
    expect(card).to_have_attribute("data-state", "ready")
    described = lab.api("GET", "models/echo").json()
    assert len(described["workers"]) == 2
    pids = [r["pid"] for w in described["workers"] for r in w["ranks"]]
    assert len(pids) == 4 and all(pid_alive(p) for p in pids)
    page.screenshot(path=str(ARTIFACTS / "labextension-scaled.png"))

    # Logs of every rank in a main-area tab.
    card.locator("button.jp-LmServe-logs").click()
    logs = page.locator(".jp-LmServe-logsView")
    expect(logs).to_be_visible()
    expect(page.locator(".lm-TabBar-tab", has_text="Logs: echo")).to_have_count(1)
    expect(logs.locator(".jp-LmServe-logChunk")).to_have_count(4, timeout=15_000)
    page.screenshot(path=str(ARTIFACTS / "labextension-logs.png"))

    # Follows the theme: the panel's background changes with JupyterLab Dark.
    light_bg = panel.evaluate("el => getComputedStyle(el).backgroundColor")
    _run_command(page, "Use Theme: JupyterLab Dark",
                 until=page.locator('body[data-jp-theme-light="false"] #lmserve-panel'))
    dark_bg = panel.evaluate("el => getComputedStyle(el).backgroundColor")
    assert dark_bg != light_bg
    page.screenshot(path=str(ARTIFACTS / "labextension-dark.png"))

    # Undeploy from the panel: confirmation, then the model leaves.
    card.locator("button.jp-LmServe-undeploy").click()
    expect(dialog.locator(".jp-Dialog-header")).to_contain_text('Undeploy "echo"?')
    dialog.locator("button.jp-mod-accept").click()
    expect(card).to_have_count(0, timeout=60_000)
    expect(panel.locator(".jp-LmServe-empty")).to_be_visible()
    assert lab.api("GET", "models").json()["models"] == []
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids), "rank processes outlived the undeploy"
    expect(panel.locator(".jp-LmServe-pollError")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "labextension-undeployed.png"))

    # Hidden (sidebar collapsed), the panel stops polling; shown, it resumes at once.
    polls: list[float] = []
    list_url = re.compile(r".*/lmserve/api/models(\?[0-9]*)?$")
    page.on("request", lambda r: polls.append(time.monotonic()) if list_url.match(r.url) else None)
    tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="lmserve-panel"]')
    tab.click()
    expect(panel).to_be_hidden()
    expect(panel.locator(".jp-LmServe-status")).to_have_text("Paused")
    hidden_at = time.monotonic()
    page.wait_for_timeout(5000)
    assert [t for t in polls if t > hidden_at + 0.5] == [], "the hidden panel kept polling"
    tab.click()
    expect(panel).to_be_visible()
    expect(panel.locator(".jp-LmServe-status")).to_have_text("Live")
    shown_at = time.monotonic()
    deadline = shown_at + 2
    while not [t for t in polls if t >= shown_at - 0.5] and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert [t for t in polls if t >= shown_at - 0.5], "the panel did not poll when shown again"
    assert not page.console_errors, page.console_errors


def test_panel_shows_server_errors(lab, page):
    """The contract's JSON error messages reach the user: a refused action, a failing poll."""
    from playwright.sync_api import expect

    (lab.root / "echo.py").write_text(HANDLER_SOURCE)
    deploy = lab.api("POST", "models", json={
        "name": "solo", "handler": str(lab.root / "echo.py"),
        "config": {"minWorkers": 1, "maxWorkers": 3, "deviceType": "cpu",
                   "torchrun": {"nproc-per-node": 1}},
        "wait": True,
    })
    assert deploy.status_code == 201, deploy.text

    panel = _open_lab(lab, page)
    card = panel.locator('section.jp-LmServe-model[data-model="solo"]')
    expect(card).to_have_attribute("data-state", "ready", timeout=10_000)

    # The dialog refuses out-of-range counts itself, so rewrite the PUT on its
    # way out: the real server refuses 5 workers and its message must show.
    def out_of_range(route):
        route.continue_(post_data=json.dumps({"workers": 5}))

    # (ServerConnection appends a cache-busting "?<timestamp>" to every URL.)
    scale_url = re.compile(r".*/lmserve/api/models/solo(\?[0-9]*)?$")
    page.route(scale_url, out_of_range)
    card.locator("button.jp-LmServe-scale").click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator("input.jp-LmServe-scaleInput").fill("2")
    dialog.locator("button.jp-mod-accept").click()
    error = panel.locator(".jp-LmServe-actionError")
    expect(error).to_contain_text("solo: workers = 5: expected 1..3")
    page.unroute(scale_url)
    error.locator("button.jp-LmServe-dismiss").click()
    expect(error).to_have_count(0)
    assert len(lab.api("GET", "models/solo").json()["workers"]) == 1

    # A failing poll: the message shows, the last good data stays, polling
    # backs off; when the server answers again the error goes away.
    def broken(route):
        route.fulfill(status=503, content_type="application/json",
                      body=json.dumps({"error": {"message": "engine restarting (test)"}}))

    models_url = re.compile(r".*/lmserve/api/models(\?[0-9]*)?$")
    page.route(models_url, broken)
    poll_error = panel.locator(".jp-LmServe-pollError")
    expect(poll_error).to_contain_text("engine restarting (test)", timeout=UPDATE_WITHIN_S * 1000)
    expect(card).to_have_attribute("data-state", "ready")
    expect(panel.locator(".jp-LmServe-status")).to_contain_text("Retrying in", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "labextension-error.png"))
    page.unroute(models_url)
    expect(poll_error).to_have_count(0, timeout=20_000)
    expect(panel.locator(".jp-LmServe-status")).to_have_text("Live")
