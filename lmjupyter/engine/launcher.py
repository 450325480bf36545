"""How a worker group's torchrun agent is started: from the fork server, or cold.

The one interface a :class:`~lmjupyter.engine.worker_group.WorkerGroup` uses::

    process = await launcher.launch(argv, env, log_path)   # argv: torchrun's arguments, then -m MODULE ARGS
    process.pid; process.returncode; await process.wait(); process.send_signal(sig)

``process.pid`` leads its own process group (the agent and its ranks), so that
``os.killpg(process.pid, SIGKILL)`` ends the whole group.

- :class:`ColdLauncher` runs ``python -m lmjupyter.worker.launch ARGV`` (torchrun exec'd with
  a parent-death signal): a fresh interpreter that imports torch, and ranks that do too.
- :class:`ForkServerLauncher` (the default) keeps one process with torch imported
  (``lmjupyter.worker.forkserver``) and asks it to fork the agent, whose ranks are forked
  in turn: no interpreter start and no torch import per worker. A start it cannot serve
  (the fork server failed to come up, or a model's python path would shadow a module it has
  imported) is a cold start, and the reason is logged.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time

from lmjupyter import ipc
from lmjupyter.procs import pid_alive

log = logging.getLogger("lmjupyter")
READY_TIMEOUT_S = 120.0  # the fork server's own imports, on a busy machine
MAX_RESTARTS = 3         # fork servers that may die before every start is a cold one


class ColdLauncher:
    """torchrun in a new interpreter: what every start did before the fork server."""

    kind = "cold"

    async def launch(self, argv: list[str], env: dict[str, str], log_path: str):
        with open(log_path, "ab") as agent_log:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "lmjupyter.worker.launch", *argv, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=agent_log, stderr=agent_log, start_new_session=True)

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"kind": self.kind}


class ForkedProcess:
    """A torchrun agent forked by the fork server (not our child: the server reports its exit)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()

    def exited(self, returncode: int) -> None:
        if not self._exited.done():
            self.returncode = returncode
            self._exited.set_result(returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    async def orphaned(self) -> None:
        """The fork server went away: its agents get their parent-death signal; wait until gone."""
        deadline = time.monotonic() + 10.0
        while pid_alive(self.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if pid_alive(self.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self.exited(-signal.SIGKILL)


class _ServerConnection(asyncio.Protocol):
    def __init__(self, launcher: "ForkServerLauncher"):
        self.launcher = launcher
        self.frames = ipc.FrameDecoder()

    def data_received(self, data: bytes) -> None:
        for message in self.frames.feed(data):
            self.launcher._on_message(message)

    def connection_lost(self, exc) -> None:
        self.launcher._on_lost()


class ForkServerLauncher:
    """Starts agents from the fork server; see the module docstring."""

    kind = "fork-server"

    def __init__(self, env: dict[str, str], log_path: str, preload: list[str] | None = None):
        # The fork server's own environment (the server's, with our PYTHONPATH); the fork server
        # keeps the CUDA driver uninitialised itself (lmjupyter/worker/cudafork.py).
        self.env = dict(env)
        self.log_path = log_path
        self.preload = list(preload or [])
        self.cold = ColdLauncher()
        self.info: dict = {}        # the fork server's "ready" message
        self.state = "stopped"      # stopped, starting, ready, failed
        self.error: str | None = None
        self.forked = 0             # agents started from the fork server (health shows it)
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._transport: asyncio.Transport | None = None
        self._ready: asyncio.Future | None = None
        self._connected: asyncio.Future | None = None  # the socket to it exists (or it failed to start)
        self._pending: dict[int, asyncio.Future] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._next_id = 0
        self._starting: asyncio.Task | None = None
        self._closed = False

    # ---- the fork server's life --------------------------------------------------------------------
    def start(self) -> None:
        """Start the fork server in the background (needs the running loop); no-op if it runs."""
        if self._closed or self.state in ("starting", "ready", "failed") or self.restarts > MAX_RESTARTS:
            return  # (a fork server that failed to come up is not tried again: every start is cold)
        self.state = "starting"
        self._ready = asyncio.get_running_loop().create_future()
        self._connected = asyncio.get_running_loop().create_future()
        self._starting = asyncio.ensure_future(self._start())

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        started = time.monotonic()
        try:
            with theirs, open(self.log_path, "ab") as server_log:
                command = [sys.executable, "-m", "lmjupyter.worker.forkserver", str(theirs.fileno())]
                if self.preload:
                    command += ["--preload", ",".join(self.preload)]
                self._process = await asyncio.create_subprocess_exec(
                    *command, env=self.env, pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                    stdout=server_log, stderr=server_log, start_new_session=True)
            self._transport, _ = await asyncio.get_running_loop().create_unix_connection(
                lambda: _ServerConnection(self), sock=ours)
            self._connected.set_result(None)
            await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT_S)
        except Exception as exc:
            self._failed(f"the fork server did not start: {type(exc).__name__}: {exc}")
            return
        log.info("fork server ready (pid %s) in %.1fs with %s imported%s%s", self.info.get("pid"),
                 time.monotonic() - started, ", ".join(self.info.get("preloaded", [])),
                 f"; importing {', '.join(self.info['preloading'])} between launches"
                 if self.info.get("preloading") else "",
                 f"; could not import {self.info['failed']}" if self.info.get("failed") else "")

    def _failed(self, reason: str) -> None:
        self.state, self.error = "failed", reason
        log.warning("%s; worker groups start cold", reason)
        for future in (self._ready, self._connected):
            if future is not None and not future.done():
                future.set_result(None)
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    def _on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            self.info = message[1]
            if self.info.get("error"):
                self._failed(self.info["error"])
            elif not self._ready.done():  # (done: it came too late, after READY_TIMEOUT_S)
                self.state = "ready"
                self._ready.set_result(None)
        elif kind == "preloaded":
            self._on_preloaded(message[1])
        elif kind in ("started", "refused"):
            future = self._pending.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(message)
        elif kind == "exited":
            child = self._children.pop(message[1], None)
            if child is not None:
                child.exited(message[2])

    def _on_preloaded(self, report: dict) -> None:
        """One more module of ``preload`` imported (or not) in the fork server, between launches."""
        module = report["module"]
        self.info["preloading"] = [m for m in self.info.get("preloading", []) if m != module]
        if report["failed"]:
            self.info.setdefault("failed", {})[module] = report["failed"]
            log.warning("the fork server could not import %s: %s", module, report["failed"])
        else:
            self.info.setdefault("preloaded", []).append(module)
        if report["error"]:
            # The fork server refuses launches from now on (each is a cold start); its agents live on.
            self.error = report["error"]
            log.warning("%s", report["error"])

    def _on_lost(self) -> None:
        """The fork server exited: its agents die with it; the next start brings up another."""
        self._transport = None
        for future in self._pending.values():
            if not future.done():
                future.set_result(("refused", None, "the fork server exited"))
        self._pending.clear()
        children, self._children = list(self._children.values()), {}
        for child in children:
            asyncio.ensure_future(child.orphaned())
        if self.state == "ready" and not self._closed:
            self.restarts += 1
            log.warning("the fork server exited; starting another (%d of %d)", self.restarts, MAX_RESTARTS)
            self.state = "stopped"
        elif self.state == "starting":
            self._failed(f"the fork server exited while starting (see {self.log_path})")

    # ---- starting agents -------------------------------------------------------------------------
    async def launch(self, argv: list[str], env: dict[str, str], log_path: str):
        """Fork an agent. Asked while the fork server still imports torch, the request waits in
        its socket and is served as soon as torch is imported, before the modules of ``preload``;
        if the fork server fails meanwhile, it is refused, and the start is a cold one."""
        self.start()
        if self._connected is not None:
            await asyncio.shield(self._connected)
        if self.state not in ("starting", "ready") or self._transport is None or self.error:
            return await self.cold.launch(argv, env, log_path)
        self._next_id += 1
        launch_id = self._next_id
        answer = self._pending[launch_id] = asyncio.get_running_loop().create_future()
        request = {"argv": list(argv), "env": dict(env), "cwd": os.getcwd(), "log": log_path}
        self._transport.write(ipc.pack(("launch", launch_id, request)))
        kind, _, detail = await answer
        if kind == "refused":
            log.warning("worker starts cold: %s", detail)
            return await self.cold.launch(argv, env, log_path)
        child = self._children[launch_id] = ForkedProcess(detail)
        self.forked += 1
        return child

    async def close(self) -> None:
        """Stop the fork server (after the worker groups: its agents die with it)."""
        self._closed = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
        if self._transport is not None:
            self._transport.close()
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        self.state = "stopped"

    def describe(self) -> dict:
        out = {"kind": self.kind, "state": self.state, "pid": self.info.get("pid"), "forked": self.forked,
               "preloaded": self.info.get("preloaded", []), "preloading": self.info.get("preloading", [])}
        if self.error:
            out["error"] = self.error
        return out
