"""A Jupyter server with the lmjupyter extension, driven like ``run.Server`` (``run.py --jupyter``).

The routes are the same (``<url>lmserve/api/...``, ``Authorization: token ...``), so the
benchmark scenarios run against it unchanged; its config enables the extension and
allows the benchmark's handler folders, in a scratch ``JUPYTER_CONFIG_DIR``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import requests

from run import HERE, TOKEN, Server


class JupyterServer(Server):
    """``loop="uvloop"``: JupyterLab as the README's first command starts it (``lmjupyter lab``);
    ``"asyncio"``: a stock ``jupyter server`` on asyncio's loop."""

    def __init__(self, workdir: str, loop: str = "uvloop"):
        config_dir = os.path.join(workdir, f"jupyter-config-{time.monotonic_ns()}")
        os.makedirs(config_dir)
        with open(os.path.join(config_dir, "jupyter_server_config.json"), "w") as f:
            json.dump({"ServerApp": {"jpserver_extensions": {"lmjupyter": True}},
                       "LMServe": {"allow_roots": [HERE, workdir]}}, f)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log_path = os.path.join(workdir, f"jupyter-{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "wb")
        app = ["lmjupyter.lab", "--loop", "uvloop"] if loop == "uvloop" else ["jupyter_server"]
        cmd = [sys.executable, "-m", *app, "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={workdir}",
               f"--IdentityProvider.token={TOKEN}"]
        if os.geteuid() == 0:
            cmd.append("--ServerApp.allow_root=True")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LMJUPYTER_", "JUPYTER_"))}
        env.update(PYTHONUNBUFFERED="1", JUPYTER_CONFIG_DIR=config_dir,
                   JUPYTER_RUNTIME_DIR=os.path.join(config_dir, "runtime"))
        self.proc = subprocess.Popen(cmd, cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{port}/"
        self.loop = loop
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {TOKEN}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited with {self.proc.returncode}:\n" + open(self.log_path).read())
            try:
                if self.session.get(self.url + "lmserve/api/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError("jupyter server did not answer:\n" + open(self.log_path).read())
