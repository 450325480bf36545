"""Start a real ``lmjupyter serve`` subprocess for tests, and tools to watch processes."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

from lmjupyter.client import Client
from lmjupyter.procs import pid_alive

HANDLERS = os.path.join(os.path.dirname(__file__), "handlers")


class ServerProcess:
    def __init__(self, root: str, *args: str, token: str = "test-token", env: dict | None = None):
        self.root, self.token = root, token
        cmd = [sys.executable, "-m", "lmjupyter.cli", "serve", "--port", "0", "--token", token,
               "--allow-root", HANDLERS, *args]
        self.log_path = os.path.join(root, f"server-{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
        self.url = self._wait_for_url(timeout=30)
        self.client = Client(self.url, token, timeout=120)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = open(self.log_path, encoding="utf-8", errors="replace").read()
            match = re.search(r"serving at (http://\S+)", text)
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise RuntimeError("server did not print its URL in time:\n" + open(self.log_path).read())

    def log(self) -> str:
        return open(self.log_path, encoding="utf-8", errors="replace").read()

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> None:
        stop_process(self.proc, sig, timeout)
        self._log.close()


@contextmanager
def running_server(root: str, *args: str, **kwargs):
    server = ServerProcess(root, *args, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30) -> None:
    """Send ``sig``; SIGKILL if the process has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def handler_path(name: str) -> str:
    return os.path.join(HANDLERS, name)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    return pid_alive(pid)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (torchrun agents and their ranks)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def is_fork_server(pid: int) -> bool:
    """The server's fork server (lmjupyter.worker.forkserver) lives as long as the server: no worker."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"lmjupyter.worker.forkserver" in f.read()
    except OSError:
        return False


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def rank_pids(description: dict) -> list[int]:
    return [r["pid"] for w in description["workers"] for r in w["ranks"]]


def cpu_config(**overrides) -> dict:
    config = {"deviceType": "cpu", "minWorkers": 1, "maxWorkers": 1}
    config.update(overrides)
    return config


def dumps(obj) -> str:
    return json.dumps(obj)
