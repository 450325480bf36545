"""The README's tour works as written: its handler file and its Python client code, against a real server."""
import os
import re
import subprocess
import sys

import pytest

from serverproc import ServerProcess

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
pytestmark = pytest.mark.timeout(120)


def _readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_readme_starts_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", _readme(), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["bash scripts/lab.sh", "bash .ci/run"]


def test_tour_handler_and_python_client_run(tmp_path):
    text = _readme()
    handler = re.search(r"cat > echo.py <<'PY'\n(.*?)\nPY\n", text, re.S).group(1)
    (tmp_path / "echo.py").write_text(handler)
    python = re.search(r"```python\n(from lmjupyter import Client\n.*?)```", text, re.S).group(1)
    server = ServerProcess(str(tmp_path), token="secret")
    try:
        code = python.replace("http://127.0.0.1:8765", server.url)
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stderr
        assert "ready" in result.stdout
        assert server.client.list() == []
    finally:
        server.stop()


def test_lab_command_skips_a_finished_setup_and_opens_jupyterlab(tmp_path):
    """The README's first command, once set up (as CI's own setup just did), starts JupyterLab
    without running the setup again; the quickstart notebook and the lmjupyter routes are there."""
    import signal
    import time

    import requests

    root = os.path.dirname(README)
    log_path = tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", "scripts/lab.sh", "--no-browser", "--port", "0",
                                 "--IdentityProvider.token=readme-test"], cwd=root, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            match = re.search(r"(http://127\.0\.0\.1:\d+/)lab", log_path.read_text(errors="replace"))
            url = match and match.group(1)
            time.sleep(0.2)
        text = log_path.read_text(errors="replace")
        assert url, f"JupyterLab did not start:\n{text[-3000:]}"
        assert "==> .venv is up to date" in text and "==> installing" not in text, text[:2000]
        headers = {"Authorization": "token readme-test"}
        health = requests.get(url + "lmserve/api/health", headers=headers, timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["loop"] == "uvloop"  # lmjupyter lab: JupyterLab on uvloop
        notebook = requests.get(url + "api/contents/notebooks/quickstart.ipynb", headers=headers, timeout=30)
        assert notebook.status_code == 200 and notebook.json()["type"] == "notebook"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
