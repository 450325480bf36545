"""Two "hosts" on one machine: Linux network namespaces joined by a veth pair, and
(:class:`Cluster`) host A's ``lmjupyter serve`` with host B's ``lmjupyter node``.

Host A gets 10.231.0.1, host B 10.231.0.2; the addresses exist only inside the two
namespaces, so nothing leaves the machine and nothing in the root namespace sees
them. Names carry this process's pid and a random part, so test runs of several
developers on one machine never collide. :meth:`HostPair.destroy` kills what runs in
the namespaces (found by ``ip netns pids``, so only this run's processes) and deletes
them, also when a test failed. Needs root (CI runs as root); :func:`unavailable`
says why not otherwise.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

import contextlib

import pytest

from lmjupyter.client import Client
from serverproc import HANDLERS, is_fork_server, wait_until

CLONE_NEWNET = 0x40000000
ADDRESS_A, ADDRESS_B = "10.231.0.1", "10.231.0.2"


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (CI runs as root): ip netns add fails otherwise"
    if not shutil.which("ip"):
        return "iproute2's `ip` is not installed"
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class HostPair:
    def __init__(self):
        tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.a, self.b = f"lmj{tag}a", f"lmj{tag}b"
        self.veth_a, self.veth_b = f"lv{tag}a", f"lv{tag}b"  # at most 15 characters
        self._made: list[str] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def create(self) -> "HostPair":
        for ns in (self.a, self.b):
            _ip("netns", "add", ns)
            self._made.append(ns)
        _ip("link", "add", self.veth_a, "netns", self.a, "type", "veth", "peer", "name", self.veth_b, "netns", self.b)
        for ns, dev, address in ((self.a, self.veth_a, ADDRESS_A), (self.b, self.veth_b, ADDRESS_B)):
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        return self

    def popen(self, ns: str, command: list[str], **kwargs) -> subprocess.Popen:
        """A process in namespace ``ns`` (``ip netns exec`` execs it: the pid is the command's own)."""
        return subprocess.Popen(["ip", "netns", "exec", ns, *command], **kwargs)

    def pids(self, ns: str) -> set[int]:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=20).stdout
        return {int(p) for p in out.split()}

    def in_a(self, fn, *args, **kwargs):
        """Run ``fn`` on a thread inside host A's namespace (sockets it opens live there): the test's client."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(4, initializer=_enter, initargs=(self.a,))
        return self._executor.submit(fn, *args, **kwargs)

    def destroy(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        for _ in range(3):
            pids = set().union(*(self.pids(ns) for ns in self._made)) if self._made else set()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self._made.clear()


def _enter(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
    finally:
        os.close(fd)


TOKEN = "multihost-token"
AGENT = "hostb"


class Cluster:
    """Host A's server and host B's agent, started and stopped by the tests."""

    def __init__(self, pair: HostPair, root, env: dict | None = None):
        self.pair, self.root, self.env = pair, root, dict(env or {})
        self.server = self.agent = None
        self.client: Client | None = None
        self._logs = []

    def _log(self, name: str):
        path = self.root / f"{name}-{time.monotonic_ns()}.log"
        handle = open(path, "wb")
        self._logs.append(handle)
        return path, handle

    def start_server(self, *args: str) -> None:
        path, handle = self._log("server")
        self.server = self.pair.popen(self.pair.a, [
            sys.executable, "-m", "lmjupyter.cli", "serve", "--host", ADDRESS_A, "--port", "0", "--token", TOKEN,
            "--allow-root", HANDLERS, *args], cwd=self.root, stdout=handle, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"})
        self.server_log = path
        text = wait_until(lambda: _match(path, r"serving at (http://\S+)", self.server), 60, message="server URL")
        self.url = text
        self.client = Client(self.url, TOKEN, timeout=120)

    def start_agent(self, *args: str) -> None:
        path, handle = self._log("agent")
        self.agent = self.pair.popen(self.pair.b, [
            sys.executable, "-m", "lmjupyter.cli", "node", "--server", self.url, "--token", TOKEN, "--name", AGENT,
            *args], cwd=self.root, stdout=handle, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"})
        self.agent_log = path
        wait_until(lambda: _match(path, r"registered with", self.agent), 60, message="agent registration")

    def call(self, method: str, *args, timeout: float = 180, **kwargs):
        """A client call made from inside host A."""
        return self.pair.in_a(getattr(self.client, method), *args, **kwargs).result(timeout)

    def others(self, ns: str) -> set[int]:
        """Processes in a namespace besides the server, its fork server and the agent: torchrun and ranks."""
        own = {p.pid for p in (self.server, self.agent) if p is not None}
        return {pid for pid in self.pair.pids(ns) - own if not is_fork_server(pid)}

    def logs(self) -> str:
        return "\n".join(f"--- {p} ---\n{p.read_text(errors='replace')[-4000:]}"
                         for p in (self.server_log, getattr(self, "agent_log", None)) if p)

    def stop(self) -> None:
        for proc in (self.agent, self.server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for handle in self._logs:
            handle.close()


def _match(path, pattern: str, proc):
    text = path.read_text(errors="replace")
    found = re.search(pattern, text)
    if found:
        return found.group(found.lastindex or 0)
    if proc.poll() is not None:
        raise AssertionError(f"exited with {proc.returncode}:\n{text}")
    return None


@contextlib.contextmanager
def two_hosts(root, server_args=(), agent_args=(), env: dict | None = None):
    """A Cluster with both processes started; everything in both namespaces ends afterwards."""
    why = unavailable()
    if why:
        pytest.skip(why)
    pair = HostPair()
    try:
        pair.create()
    except OSError as exc:
        pair.destroy()
        pytest.skip(f"cannot make network namespaces here: {exc}")
    cluster = Cluster(pair, root, env)
    try:
        cluster.start_server(*server_args)
        cluster.start_agent(*agent_args)
        yield cluster
    finally:
        cluster.stop()
        pair.destroy()

