"""A real ``jupyter server``: the extension is listed as enabled, and stopping the server ends every worker."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jupyterproc import JupyterServer, alive, wait_until

HANDLER = Path(__file__).parent / "inprocess" / "echo_stream.py"


@pytest.mark.timeout(60)
def test_the_installed_config_enables_the_extension():
    """What `pip install` put in etc/jupyter/jupyter_server_config.d (or `jupyter server extension enable`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_CONFIG_DIR",)}
    done = subprocess.run([sys.executable, "-m", "jupyter_server", "extension", "list"], env=env,
                          capture_output=True, text=True, timeout=50)
    listing = done.stdout + done.stderr
    plain = listing.replace("\x1b[32m", "").replace("\x1b[0m", "")
    assert "lmjupyter enabled" in plain, listing
    assert f"lmjupyter {__import__('lmjupyter').__version__} OK" in plain, listing


@pytest.mark.timeout(120)
def test_sigterm_ends_every_worker_and_kernel(tmp_path):
    server = JupyterServer(tmp_path)
    try:
        shutil.copy(HANDLER, server.root / "echo_stream.py")
        pids = []
        for name in ("one", "two"):
            response = server.lmserve("POST", "models", json={
                "name": name, "handler": "echo_stream.py", "wait": True,
                "config": {"deviceType": "cpu", "minWorkers": 2, "maxWorkers": 2, "torchrun": {"nproc-per-node": 2}}})
            assert response.status_code == 201, response.text
            pids += [r["pid"] for w in response.json()["workers"] for r in w["ranks"]]
        assert len(pids) == 8 and all(alive(p) for p in pids)
        server.request("POST", "api/kernels", json={"name": "python3"}).raise_for_status()
        kernel_pid = wait_until(lambda: _kernel_pid(server.pid), 30, message="the kernel process")
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0, server.log()[-3000:]
    for pid in pids + [kernel_pid]:
        wait_until(lambda: not alive(pid), 10, message=f"pid {pid} to end")
    assert "lmjupyter: stopped 2 model(s)" in server.log()


def _kernel_pid(parent: int) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if int(fields[1]) == parent and b"ipykernel" in cmdline:
                return int(entry)
    return None
