"""How a kernel finds the lmjupyter server, without the user doing anything.

In order:

1. **The Jupyter server extension.** When it starts listening, the extension puts
   ``LMJUPYTER_URL``, ``LMJUPYTER_TOKEN`` and ``LMJUPYTER_SERVER_PID`` into its
   own environment, which every kernel it starts inherits.
2. **Jupyter's runtime files.** ``jupyter_server.serverapp.list_running_servers()``
   matched on the kernel's parent pid, for servers started before the extension
   was enabled or that do not export (the routes must answer there).
3. **Variables the user set**: ``LMJUPYTER_URL`` and ``LMJUPYTER_TOKEN`` pointing
   at any server, e.g. a shared ``lmjupyter serve``.
4. **A private server**: in plain IPython with no Jupyter server, ``lmjupyter serve
   --port 0`` is started on demand in the current directory and stopped with the
   kernel (atexit, and the Linux parent-death signal if the kernel is killed).

::

    from lmjupyter.discovery import connect
    client = connect()                 # an lmjupyter.Client, found once per process
    print(current().describe())        # which server, and how it was found
"""
from __future__ import annotations

import atexit
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from lmjupyter.procs import pid_alive

ENV_URL, ENV_TOKEN, ENV_SERVER_PID = "LMJUPYTER_URL", "LMJUPYTER_TOKEN", "LMJUPYTER_SERVER_PID"
PRIVATE_START_TIMEOUT = 60.0
PROBE_TIMEOUT = 10.0

EXTENSION, RUNTIME_FILE, ENVIRONMENT, PRIVATE, MANUAL = ("jupyter-extension", "jupyter-runtime-file",
                                                          "environment", "private", "manual")


class DiscoveryError(RuntimeError):
    """No server could be found or started; the message says what was tried."""


@dataclass
class Connection:
    url: str
    token: str
    source: str                 # one of EXTENSION, RUNTIME_FILE, ENVIRONMENT, PRIVATE, MANUAL
    detail: str = ""
    process: subprocess.Popen | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        what = {
            EXTENSION: "the Jupyter server extension of this kernel's Jupyter server",
            RUNTIME_FILE: "this kernel's Jupyter server (found in Jupyter's runtime files)",
            ENVIRONMENT: "the server named by LMJUPYTER_URL",
            PRIVATE: "a private `lmjupyter serve` started for this kernel",
            MANUAL: "the server given to %lmserve connect / discovery.use()",
        }[self.source]
        return f"{what} at {self.url}" + (f" ({self.detail})" if self.detail else "")

    def client(self, timeout: float = 600.0):
        from lmjupyter.client import Client

        return Client(self.url, self.token or None, timeout=timeout)


_lock = threading.Lock()
_current: Connection | None = None


def current(start_private: bool = True) -> Connection:
    """The connection of this process, discovered on first use."""
    global _current
    with _lock:
        if _current is None or (_current.process is not None and _current.process.poll() is not None):
            _current = discover(start_private=start_private)
        return _current


def connect(timeout: float = 600.0):
    """An :class:`lmjupyter.Client` for the server this process should use."""
    return current().client(timeout)


def reset() -> None:
    """Forget the connection; the next call discovers again (a private server is stopped)."""
    global _current
    with _lock:
        if _current is not None and _current.process is not None:
            stop_private_server(_current.process)
        _current = None


def use(url: str, token: str | None = None) -> Connection:
    """Point this process at a server by hand (what ``%lmserve connect`` does)."""
    global _current
    with _lock:
        _current = Connection(_slash(url), token or "", MANUAL)
        return _current


def discover(start_private: bool = True, environ=None) -> Connection:
    environ = os.environ if environ is None else environ
    notes: list[str] = []
    found = (_from_extension(environ, notes) or _from_runtime_files(notes)
             or _from_user_environment(environ, notes))
    if found is None:
        if not start_private:
            raise DiscoveryError("no lmjupyter server found: " + "; ".join(notes or ["nothing to try"]))
        found = start_private_server()
    found.notes = notes
    return found


def _from_extension(environ, notes: list[str]) -> Connection | None:
    url, pid = environ.get(ENV_URL), environ.get(ENV_SERVER_PID)
    if not (url and pid):
        return None
    if not pid.isdigit() or not pid_alive(int(pid)):
        notes.append(f"{ENV_SERVER_PID}={pid} names a Jupyter server that is gone")
        return None
    detail = f"Jupyter server pid {pid}" + (", this kernel's parent" if int(pid) == os.getppid() else "")
    return Connection(_slash(url), environ.get(ENV_TOKEN, ""), EXTENSION, detail)


def _from_runtime_files(notes: list[str]) -> Connection | None:
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:
        return None
    parent = os.getppid()
    for info in list_running_servers():
        if info.get("pid") != parent:
            continue
        url, token = _slash(info.get("url", "")), info.get("token", "")
        if _answers(url, token):
            return Connection(url, token, RUNTIME_FILE, f"Jupyter server pid {parent}")
        notes.append(f"the Jupyter server at {url} (pid {parent}) does not serve lmserve/ routes to its "
                     "token: enable the extension with `jupyter server extension enable lmjupyter`")
    return None


def _from_user_environment(environ, notes: list[str]) -> Connection | None:
    url = environ.get(ENV_URL)
    if not url or environ.get(ENV_SERVER_PID):
        return None
    return Connection(_slash(url), environ.get(ENV_TOKEN, ""), ENVIRONMENT, f"{ENV_URL} set by you")


def _answers(url: str, token: str) -> bool:
    import requests

    try:
        response = requests.get(url + "lmserve/api/health", timeout=PROBE_TIMEOUT,
                                headers={"Authorization": f"token {token}"} if token else {})
    except requests.RequestException:
        return False
    return response.status_code == 200


# ---- the private server -----------------------------------------------------------------------
def start_private_server(cwd: str | None = None, timeout: float = PRIVATE_START_TIMEOUT) -> Connection:
    """``lmjupyter serve --port 0`` in ``cwd``, owned by this process; stopped when it exits."""
    token = secrets.token_urlsafe(24)
    log_dir = tempfile.mkdtemp(prefix="lmjupyter-private-")
    log_path = os.path.join(log_dir, "server.log")
    env = {**os.environ, ENV_TOKEN: token, "PYTHONUNBUFFERED": "1"}  # not on the command line: ps shows it
    for key in (ENV_URL, ENV_SERVER_PID):
        env.pop(key, None)
    # The death signal follows the thread that forks: only the main thread lives as long as we do.
    in_main = threading.current_thread() is threading.main_thread()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lmjupyter.cli", "serve", "--host", "127.0.0.1", "--port", "0"],
            cwd=cwd or os.getcwd(), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if in_main and sys.platform.startswith("linux") else None)
    atexit.register(stop_private_server, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _read(log_path)
        match = re.search(r"serving at (http://\S+)", text)
        if match:
            return Connection(match.group(1), token, PRIVATE, f"pid {process.pid}, log {log_path}",
                              process=process)
        if process.poll() is not None:
            raise DiscoveryError(f"the private lmjupyter server exited with {process.returncode}:\n{text[-2000:]}")
        time.sleep(0.05)
    stop_private_server(process)
    raise DiscoveryError(f"the private lmjupyter server did not start within {timeout:g}s; log: {log_path}")


def stop_private_server(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM: the server ends its worker groups, then exits."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _die_with_parent() -> None:
    from lmjupyter.worker.deathsig import die_with_parent

    die_with_parent(signal.SIGTERM)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _slash(url: str) -> str:
    return url.rstrip("/") + "/"

