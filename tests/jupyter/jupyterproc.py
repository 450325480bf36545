"""A real Jupyter server in a subprocess, and notebooks executed in kernels it starts.

Discovery is real because the kernel is the server's own: it is started through the
server's REST API (``POST /api/sessions``), so it inherits the environment the
lmjupyter extension exported and its parent process is the server. nbclient then
drives that kernel over ZMQ through the connection file the server wrote into its
runtime dir; :class:`ServerKernel` is the part of a KernelManager nbclient needs.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import requests

from serverproc import alive, stop_process, wait_until  # noqa: F401  (alive, wait_until: re-exported)

TOKEN = "jupyter-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra) -> dict:
    """The environment minus anything that would point discovery elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LMJUPYTER_", "JUPYTER_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


class JupyterServer:
    """``jupyter server`` (or ``jupyter lab``) on 127.0.0.1 with a token, its own config and runtime dirs."""

    def __init__(self, tmp: Path, *, app: str = "jupyter_server", token: str = TOKEN, base_url: str = "/",
                 server_config: dict | None = None, args: tuple = (), root: Path | None = None,
                 config_files: dict[str, str] | None = None):
        self.tmp = Path(tmp)
        self.root = Path(root) if root else self.tmp / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_dir, self.runtime_dir = self.tmp / "config", self.tmp / "runtime"
        self.config_dir.mkdir(exist_ok=True)
        config = {"ServerApp": {"jpserver_extensions": {"lmjupyter": True}}}
        for section, values in (server_config or {}).items():
            config.setdefault(section, {}).update(values)
        (self.config_dir / "jupyter_server_config.json").write_text(json.dumps(config))
        for relative, text in (config_files or {}).items():  # e.g. labconfig/page_config.json
            (self.config_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            (self.config_dir / relative).write_text(text)
        self.token, port = token, free_port()
        self.url = f"http://127.0.0.1:{port}{base_url}"
        cmd = [sys.executable, "-m", app, "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.base_url={base_url}",
               f"--ServerApp.root_dir={self.root}", f"--IdentityProvider.token={token}", *args]
        if os.geteuid() == 0:  # containers and CI runners
            cmd.append("--ServerApp.allow_root=True")
        env = clean_env(JUPYTER_CONFIG_DIR=str(self.config_dir), JUPYTER_RUNTIME_DIR=str(self.runtime_dir),
                        JUPYTER_DATA_DIR=str(self.tmp / "data"))
        self.log_path = self.tmp / f"{app}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"
        self._wait_ready(timeout=90)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self, timeout: float) -> None:
        wait_until_jupyter_answers(self, "the Jupyter server", timeout)

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.session.request(method, self.url + path, timeout=kwargs.pop("timeout", 120), **kwargs)

    def lmserve(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.request(method, "lmserve/api/" + path, **kwargs)

    def start_kernel(self, notebook_path: str) -> "ServerKernel":
        """A kernel for ``notebook_path`` (relative to the root), started by the server itself."""
        response = self.request("POST", "api/sessions", json={
            "path": notebook_path, "name": os.path.basename(notebook_path), "type": "notebook",
            "kernel": {"name": "python3"}})
        response.raise_for_status()
        session = response.json()
        return ServerKernel(self, session["id"], session["kernel"]["id"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        stop_process(self.proc, sig, timeout)
        self._log.close()
        return self.proc.returncode


def _heartbeat_channel():
    from jupyter_client.channels import HBChannel

    class PatientHeartbeat(HBChannel):
        """nbclient judges a kernel dead once its heartbeat is silent for ``time_to_dead`` (1 s), which a
        kernel still importing on a loaded machine can be; 10 s still catches a dead one."""

        time_to_dead = 10.0

    return PatientHeartbeat


class ServerKernel:
    """What nbclient asks of a KernelManager, for a kernel owned by the Jupyter server."""

    has_kernel = True
    ipykernel = True

    def __init__(self, server: JupyterServer, session_id: str, kernel_id: str):
        self.server, self.session_id, self.kernel_id = server, session_id, kernel_id
        self.connection_file = server.runtime_dir / f"kernel-{kernel_id}.json"
        deadline = time.monotonic() + 30
        while not self.connection_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no connection file {self.connection_file}")
            time.sleep(0.05)
        self._wait_for_heartbeat(timeout=60)

    def _wait_for_heartbeat(self, timeout: float) -> None:
        """Until the kernel echoes on its heartbeat port. nbclient's client, which no KernelManager
        made, takes one missed heartbeat after its first second for a dead kernel; a kernel still
        importing ipykernel on a busy 2-core machine (e.g. while a fork server imports torch) would
        be "dead before replying to kernel_info" and shut down."""
        import json as _json

        import zmq

        info = _json.loads(self.connection_file.read_text())
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.linger = 0
        try:
            sock.connect(f"{info.get('transport', 'tcp')}://{info['ip']}:{info['hb_port']}")
            sock.send(b"ping")
            if not sock.poll(int(timeout * 1000)):
                raise RuntimeError(f"kernel {self.kernel_id} did not answer its heartbeat within {timeout:g}s")
            sock.recv()
        finally:
            sock.close()

    def client(self, **kwargs):
        from jupyter_client.asynchronous import AsyncKernelClient

        kc = AsyncKernelClient(hb_channel_class=_heartbeat_channel(), **kwargs)
        kc.load_connection_file(str(self.connection_file))
        return kc

    async def is_alive(self) -> bool:
        return self.server.request("GET", f"api/kernels/{self.kernel_id}", timeout=10).status_code == 200

    async def interrupt_kernel(self) -> None:
        self.server.request("POST", f"api/kernels/{self.kernel_id}/interrupt", timeout=10)

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        self.server.request("DELETE", f"api/sessions/{self.session_id}", timeout=60)

    async def cleanup_resources(self, restart: bool = False) -> None:
        pass


def execute_notebook(server: JupyterServer, nb: nbformat.NotebookNode, path: str, timeout: int = 180,
                     allow_errors: bool = False) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` (saved as ``path`` under the server's root) in a server-started kernel."""
    from nbclient import NotebookClient

    target = server.root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    kernel = server.start_kernel(path)
    client = NotebookClient(nb, km=kernel, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                            resources={"metadata": {"path": str(target.parent)}})
    try:
        client.execute()
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
        server.request("DELETE", f"api/sessions/{kernel.session_id}", timeout=60)
        nbformat.write(nb, target)
    return nb


def make_notebook(*sources: str) -> nbformat.NotebookNode:
    from nbformat.v4 import new_code_cell, new_notebook

    return new_notebook(cells=[new_code_cell(s) for s in sources],
                        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                 "language": "python"}})


def outputs_text(cell) -> str:
    """Everything a cell showed, as text (streams, text/plain, text/html, errors)."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] == "error":
            parts.append(f"{out['ename']}: {out['evalue']}\n" + "\n".join(out.get("traceback", [])))
        else:
            data = out.get("data", {})
            parts.append(data.get("text/plain", "") + "\n" + data.get("text/html", ""))
    return "\n".join(parts)


def wait_until_jupyter_answers(server, what: str, timeout: float) -> None:
    """Poll ``api/status`` of a started server (``proc``, ``session``, ``url``, ``log()``) until it answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {server.proc.returncode}:\n{server.log()}")
        try:
            if server.session.get(server.url + "api/status", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer in time:\n" + server.log())
