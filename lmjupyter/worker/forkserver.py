"""The fork server: one process with torch imported that forks torchrun agents on request.

A cold worker start pays, before any handler code runs, for a fresh interpreter that
imports torch in torchrun's agent and again in every rank (benchmarks/RESULTS.md,
"Where a worker start's time goes"). This process imports torch once (then the modules
of ``--preload``), never initialises CUDA or OpenMP, and then forks: the child is a
real torchrun agent (torch's own argument parser, rendezvous, monitoring and restarts;
``lmjupyter.worker.agent``) whose ranks are forked from it in turn (torchrun's
``fork`` start method). Nothing of a model is ever imported here, so a handler edited
between two deploys is the one that answers.

Started by the engine as ``python -m lmjupyter.worker.forkserver FD [--preload m1,m2]``
with FD one end of a socket pair (``ipc`` frames, both ends ours)::

    engine -> server: ("launch", id, {"argv": [...], "env": {...}, "cwd": str, "log": path})
    server -> engine: ("ready", {"pid": ..., "preloaded": [...], "failed": {...}, "preloading": [...]})
                      once, first; ("preloaded", {"module": m, "failed": reason | None,
                      "error": reason | None}) for each module of ``--preload`` in turn;
                      ("started", id, pid) | ("refused", id, reason); later ("exited", id, returncode)

"ready" comes once torch is imported (``BASE_PRELOAD``): the modules of ``--preload`` (the
Hugging Face stack, seconds more) are imported one at a time between launches, so that a
worker asked for in a new server's first seconds need not wait for them; a child forked
before a module is imported imports it itself if it needs it.

``returncode`` follows asyncio's convention (negative: killed by that signal). The
server dies with the engine (parent-death signal, and EOF on the socket), and every
agent it forked dies with it (the agent's own parent-death signal, then torchrun
stops its ranks, whose parent-death signal is set on the agent).
"""
from __future__ import annotations

import argparse
import importlib
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback

from lmjupyter import ipc
from lmjupyter.worker.cudafork import forks_keep_cuda, keep_cuda_for_forks
from lmjupyter.worker.deathsig import die_with_parent

# What every forked worker needs imported already: torch, its process groups, torchrun.
BASE_PRELOAD = ("torch", "torch.distributed", "torch.distributed.run",
                "torch.distributed.elastic.agent.server.local_elastic_agent",
                "lmjupyter.worker.agent", "lmjupyter.worker.main")


def preload(modules) -> tuple[list[str], dict[str, str]]:
    """Import what forked children should find imported; a module that fails is reported, not fatal."""
    done, failed = [], {}
    for name in modules:
        try:
            importlib.import_module(name)
            done.append(name)
        except Exception as exc:  # e.g. an optional package that is not installed
            failed[name] = f"{type(exc).__name__}: {exc}"
    return done, failed


PRELOAD_NICE = 10  # the preload yields the CPU to what the user starts at the same time (a kernel)


def preload_politely(modules) -> tuple[list[str], dict[str, str]]:
    """``preload`` in a thread of lower CPU priority, then back to one thread.

    The fork server starts with the server, when a user's first kernel often starts too; its
    seconds of imports must not starve that (on 2 cores a kernel that misses its heartbeats is
    taken for dead). Linux priorities are per thread: the imports run at nice 10 while this main
    thread, which forks the agents later, keeps the server's priority (a child inherits the
    forking thread's), and the thread has ended before anything is forked.
    """
    result: list = []

    def work() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PRELOAD_NICE)
        except (OSError, AttributeError):
            pass
        result.append(preload(modules))

    thread = threading.Thread(target=work, name="lmjupyter-preload")
    thread.start()
    thread.join()
    return result[0]


def cuda_lost(imported: str) -> str | None:
    """Why children forked from here could no longer use CUDA after importing ``imported``, or None
    (a probe fork: ``worker/cudafork.py``)."""
    if forks_keep_cuda():
        return None
    return (f"the CUDA driver was initialised while importing {imported}: forked children could not use it; "
            "workers start cold")


def shadowed(python_path: list[str]) -> list[str]:
    """Top-level modules imported here that a new PYTHONPATH entry would provide another copy of.

    A model's own requirements (``pip --target``) may hold, say, another numpy: a child forked
    from here would keep ours, so such a start must be a cold one.
    """
    imported = {name.partition(".")[0] for name in sys.modules}
    clashes = []
    for entry in python_path:
        if entry in sys.path or not os.path.isdir(entry):
            continue
        for item in os.listdir(entry):
            name = item.split(".")[0] if item.endswith((".py", ".so")) or "." not in item else None
            if name and name in imported and not item.endswith((".dist-info", ".egg-info")):
                clashes.append(f"{name} (in {entry})")
    return clashes


class ForkServer:
    def __init__(self, conn: socket.socket, preloading: list[str] | None = None):
        self.conn = conn
        self.preloading = list(preloading or [])  # still to import, between launches
        self.broken: str | None = None  # set when a preloaded module initialised the CUDA driver
        self.decoder = ipc.FrameDecoder()
        self.children: dict[int, int] = {}  # pid -> launch id
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so that the wakeup fd is written
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.selector.register(conn, selectors.EVENT_READ, "conn")
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")

    def send(self, message: tuple) -> None:
        self.conn.sendall(ipc.pack(message))

    def serve(self) -> None:
        """Launch on request and report exits until the engine hangs up; preload while idle."""
        while True:
            events = self.selector.select(timeout=0 if self.preloading else 1.0)
            for key, _ in events:
                if key.data == "wake":
                    os.read(self._wake_r, 4096)
                elif not self._read():
                    return
            self._reap()
            if self.preloading and not events:
                self._preload_next()

    def _preload_next(self) -> None:
        module = self.preloading.pop(0)
        _, failed = preload_politely([module])
        report = {"module": module, "failed": failed.get(module), "error": cuda_lost(module)}
        if report["error"]:
            self.broken = report["error"]
            self.preloading.clear()
        self.send(("preloaded", report))

    def _read(self) -> bool:
        try:
            data = self.conn.recv(1 << 16)
        except ConnectionError:
            return False
        if not data:
            return False
        for message in self.decoder.feed(data):
            if message[0] == "launch":
                self._launch(message[1], message[2])
        return True

    def _launch(self, launch_id: int, request: dict) -> None:
        if self.broken:
            self.send(("refused", launch_id, self.broken))
            return
        clashes = shadowed([p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p])
        if clashes:
            self.send(("refused", launch_id, "the model's python path provides modules the fork server "
                                             f"has imported: {', '.join(clashes[:5])}"))
            return
        pid = os.fork()
        if pid == 0:
            self._become_agent(request)  # never returns
        self.children[pid] = launch_id
        self.send(("started", launch_id, pid))

    def _become_agent(self, request: dict) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.selector.close()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            self.conn.close()
            os.setsid()                       # its own process group: the engine kills it as one
            die_with_parent(signal.SIGTERM)   # torchrun's SIGTERM handler then stops its ranks
            _redirect(request["log"])
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            keep_cuda_for_forks()             # torchrun's agent asks is_available(); its ranks are forked
            _extend_sys_path(request["env"].get("PYTHONPATH", ""))
            from lmjupyter.worker.agent import run_agent

            code = run_agent(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(code)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            launch_id = self.children.pop(pid, None)
            if launch_id is not None:
                self.send(("exited", launch_id, _returncode(status)))


def _returncode(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _redirect(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


def _extend_sys_path(python_path: str) -> None:
    """What PYTHONPATH would have put first on a fresh interpreter's path."""
    entries = [p for p in python_path.split(os.pathsep) if p]
    for entry in reversed(entries):
        if entry not in sys.path:
            sys.path.insert(0, entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmjupyter.worker.forkserver")
    parser.add_argument("fd", type=int, help="our end of the socket pair to the engine")
    parser.add_argument("--preload", default="",
                        help="more modules to import between launches, in turn (comma-separated)")
    args = parser.parse_args(argv)
    die_with_parent(signal.SIGKILL)
    keep_cuda_for_forks()
    conn = socket.socket(fileno=args.fd)
    started = time.perf_counter()
    extra = [m for m in args.preload.split(",") if m]
    done, failed = preload_politely(BASE_PRELOAD)
    info = {"pid": os.getpid(), "preloaded": done, "failed": failed, "preloading": extra,
            "import_s": round(time.perf_counter() - started, 3)}
    error = cuda_lost(", ".join(BASE_PRELOAD))
    if error:
        info["error"] = error
    server = ForkServer(conn, preloading=extra)
    server.send(("ready", info))
    if "error" in info:
        return 1
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
