"""One worker: a real torchrun process group of N ranks, and the sockets to them.

The server listens on a unix socket in its private run directory; every rank
connects, says hello with its pid, loads the handler and says ready (or why it
could not). A batch is written to every rank; the output rank answers. Any rank
hanging up means the group is broken: its in-flight batch fails at once and the
owner (:class:`~lmjupyter.engine.model.ServedModel`) decides about a restart.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import lmjupyter
from lmjupyter import ipc
from lmjupyter.engine.launcher import ColdLauncher
from lmjupyter.engine.request import PendingRequest, RequestFailed
from lmjupyter.engine.slots import SlotRequests
from lmjupyter.engine.states import WorkerState
from lmjupyter.procs import pid_alive

COLD = ColdLauncher()
_event_numbers = itertools.count(1)  # one sequence over every group, so that a model's events sort


class WorkerStartError(RuntimeError):
    """The group did not come up; ``permanent`` is true when retrying cannot help."""

    def __init__(self, message: str, traceback: str = "", permanent: bool = False):
        super().__init__(message)
        self.traceback = traceback
        self.permanent = permanent


@dataclass
class WorkerSpec:
    """Everything a worker group needs to start, decided by the engine."""

    model_name: str
    worker_id: int
    handler: str
    model_dir: str
    config: dict           # the model-config as YAML keys (ctx.model_yaml_config)
    nproc: int
    gpus: list[int]
    torchrun_args: list[str]
    env: dict[str, str]
    run_dir: str           # private 0700 directory of the server
    log_dir: str
    startup_timeout: float
    manifest: dict = field(default_factory=dict)
    spares: Any = field(default=None, repr=False, compare=False)  # the engine's SparePool, if any
    spare: bool = False    # this group is a warm spare: ranks import torch, then wait for a spec
    model_version: str = ""
    on_metrics: Callable[[list], None] | None = field(default=None, repr=False, compare=False)  # handler metrics
    launcher: Any = field(default=None, repr=False, compare=False)  # engine/launcher.py; None: cold
    events: Any = field(default=None, repr=False, compare=False)    # a list the start-up events go to
    nnodes: int = 1        # hosts of the group; > 1: ``remote`` (lmjupyter/nodes/launch.py) starts the others
    remote: Any = field(default=None, repr=False, compare=False)

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def devices(self) -> str:
        return ",".join(map(str, self.gpus))

    @property
    def spare_key(self) -> tuple:
        """What must be equal for a spare to serve this spec: torchrun's arguments (nproc
        included) and the whole environment (CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, PYTHONPATH...)."""
        return tuple(self.torchrun_args), tuple(sorted(self.env.items()))

    def command(self, spec_file: str) -> list[str]:
        """The cold start's command line (what a dry run shows)."""
        return [sys.executable, "-m", "lmjupyter.worker.launch", *self.torchrun_argv(spec_file)]

    def torchrun_argv(self, spec_file: str) -> list[str]:
        """torchrun's arguments, then the rank module: what every launcher is given."""
        return [*self.torchrun_args, "-m", "lmjupyter.worker.main", spec_file]


@dataclass
class RankLink:
    rank: int
    pid: int
    writer: asyncio.Transport  # write() and close(), as a StreamWriter had
    state: str = "loading"
    phase: dict | None = None  # the start-up phase the rank reported last: {"name", "done", "total"}
    node: str | None = None    # the agent's node a rank on another host runs on; None: this host


class _RankConnection(asyncio.Protocol):
    """One rank's socket: each frame is decoded as soon as it is in and handed to the group
    in the same event-loop callback (no reader task to wake, no per-message coroutine)."""

    def __init__(self, group: "WorkerGroup", node: str | None = None):
        self.group = group
        self.node = node
        self.link: RankLink | None = None
        self.transport: asyncio.Transport | None = None
        self._frames = ipc.FrameDecoder()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.group._connections.append(self)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._frames.feed(data)
        except Exception:  # not our framing: a broken peer
            self.transport.close()
            return
        for message in messages:
            self.group._on_message(self, message)

    def connection_lost(self, exc) -> None:
        if self in self.group._connections:
            self.group._connections.remove(self)
        self.group._on_connection_lost(self)


class WorkerGroup:
    """A torchrun group serving one batch at a time, or, when its handler batches continuously
    (``slots`` > 0, said by the ranks when ready), up to ``slots`` requests that join and leave
    as they come (see :mod:`lmjupyter.engine.slots` for that mode's message handling)."""

    def __init__(self, spec: WorkerSpec, on_batch_done: Callable[["WorkerGroup"], None],
                 on_broken: Callable[["WorkerGroup", str], None]):
        self.spec = spec
        self.id = spec.worker_id
        self.state = WorkerState.STARTING
        self.ranks: dict[int, RankLink] = {}
        self.output_rank = 0
        self.handler_info: dict = {}  # what the ranks said of their handler when ready
        self.process: asyncio.subprocess.Process | None = None
        self.batch: list[PendingRequest] | None = None
        self.started_at = time.monotonic()
        self._batch_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # loop time by which the batch in flight must be answered
        self._server: asyncio.AbstractServer | None = None
        self._ready = asyncio.get_running_loop().create_future()
        self._on_batch_done = on_batch_done
        self._on_broken = on_broken
        self._tasks: set[asyncio.Task] = set()
        self._connections: list[_RankConnection] = []
        self.agent_log = os.path.join(spec.log_dir, "agent.log")  # torchrun's own output
        self.taken_by: WorkerGroup | None = None  # set on a spare when a deploy takes it
        self._spec_payload: dict | None = None     # sent to a taken spare's ranks as they say hello
        self.slots = 0                             # > 0: continuous batching (SlotRequests below)
        self.requests = SlotRequests(self)

    # ---- start-up -------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn torchrun (or take a matching warm spare's) and wait until every rank has loaded the handler."""
        spec = self.spec
        os.makedirs(spec.log_dir, mode=0o700, exist_ok=True)
        self.started_at = time.monotonic()
        self._event(None, "starting ranks", 0, spec.world_size)
        if spec.remote is not None:  # a group across hosts (lmjupyter/nodes/launch.py)
            await spec.remote.launch(self)
            await self._wait_ready()
            return
        pool = spec.spares
        if pool is None:
            await self._launch()
            await self._wait_ready()
            return
        pool.group_starting()
        try:
            spare = pool.take(spec)
            if spare is not None:
                self._take_over(spare)
            else:
                await self._launch()
            await self._wait_ready()
        finally:
            pool.group_started(spec)

    async def _launch(self) -> None:
        spec = self.spec
        socket_path = os.path.join(spec.run_dir, f"{spec.model_name[:40]}-w{spec.worker_id}-{id(self)}.sock")
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _RankConnection(self.current()), path=socket_path)
        os.chmod(socket_path, 0o600)
        spec_file = socket_path[:-5] + ".json"
        with open(os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump({"socket": socket_path, "spare": spec.spare, **self._payload()}, f)
        launcher = spec.launcher or COLD
        self.process = await launcher.launch(spec.torchrun_argv(spec_file), spec.env, self.agent_log)
        self._spawn(self._watch_exit())

    def _payload(self) -> dict:
        """What a rank needs to load the handler (the spec file's content, or a spare's ``spec`` message)."""
        spec = self.spec
        return {"model_name": spec.model_name, "handler": spec.handler, "model_dir": spec.model_dir,
                "config": spec.config, "log_dir": spec.log_dir, "manifest": spec.manifest,
                "model_version": spec.model_version, "server_version": lmjupyter.__version__,
                "startup_timeout": spec.startup_timeout,
                "response_timeout": spec.config.get("responseTimeout", 120)}

    def _take_over(self, spare: "WorkerGroup") -> None:
        """Become the group a warm spare started: its torchrun, socket and ranks, which have
        imported torch and now get this group's spec (ranks still starting get it on hello)."""
        spare.taken_by = self
        _resolve(spare._ready, None)  # the spare's own start() returns; the pool has let go of it
        self.process, self._server, self.agent_log = spare.process, spare._server, spare.agent_log
        spare._server = None
        self.ranks, self._connections = spare.ranks, spare._connections
        for connection in self._connections:
            connection.group = self
        self._spec_payload = self._payload()
        self._event(None, "starting ranks", len(self.ranks), self.spec.nproc, "a warm spare's")
        frame = ipc.pack(("spec", self._spec_payload))
        for link in self.ranks.values():
            link.state = "loading"
            link.writer.write(frame)
        self._spawn(self._watch_exit())

    def rank_protocol(self, node: str) -> asyncio.Protocol:
        """The protocol of a rank connection from another host, once it has authenticated."""
        return _RankConnection(self, node)

    def current(self) -> "WorkerGroup":
        """The group that owns this one's processes now: itself, or the group that took the spare."""
        group = self
        while group.taken_by is not None:
            group = group.taken_by
        return group

    async def _wait_ready(self) -> None:
        spec = self.spec
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), spec.startup_timeout)
        except asyncio.TimeoutError:
            loaded = sorted(r for r, link in self.ranks.items() if link.state == "ready")
            self.state = WorkerState.FAILED
            await self.kill()
            message = (f"worker {self.id} did not start within startupTimeout={spec.startup_timeout:g}s "
                       f"(ranks ready: {loaded or 'none'} of {spec.world_size})")
            self._event(None, "failed", None, None, message)
            raise WorkerStartError(message) from None
        except WorkerStartError as exc:
            self.state = WorkerState.FAILED
            self._event(None, "failed", None, None, str(exc).splitlines()[0])
            await self.kill()
            raise
        self.state = WorkerState.READY

    def _on_message(self, connection: _RankConnection, message: tuple) -> None:
        link = connection.link
        if link is not None:
            self._handle(link, message)
        elif message[0] == "hello":
            _, rank, pid = message
            connection.link = self.ranks[rank] = RankLink(rank, pid, connection.transport, node=connection.node)
            if not self.spec.spare:
                self._event(None, "starting ranks", len(self.ranks), self.spec.world_size)
            if self._spec_payload is not None:
                connection.transport.write(ipc.pack(("spec", self._spec_payload)))
        else:
            connection.transport.close()

    def _on_connection_lost(self, connection: _RankConnection) -> None:
        link = connection.link
        if link is not None:
            link.state = "exited"
            where = f" on node {link.node}" if link.node else ""
            self._broken(f"rank {link.rank} (pid {link.pid}{where}) of worker {self.id} exited")

    def _handle(self, link: RankLink, message: tuple) -> None:
        kind = message[0]
        if kind == "result" and self.batch is not None and message[1] == self._batch_id:
            for request, answer in zip(self.batch, message[2]):
                request.answer(answer)
            self._finish_batch()
        elif kind == "partial" and self.batch is not None and message[1] == self._batch_id:
            for position, answer in message[2]:
                self.batch[position].partial(answer)
        elif kind == "error" and self.batch is not None and message[1] == self._batch_id:
            _, _, rank, text, trace = message
            self.fail_batch(RequestFailed(500, f"handler failed on rank {rank}: {text}", traceback=trace))
            self._finish_batch()
        elif kind == "events":
            self.requests.on_events(message[1], message[2])
        elif kind == "phase" and link.state != "ready":  # start-up phases only
            _, rank, name, done, total = message
            link.phase = {"name": name, "done": done, "total": total}
            self._event(rank, name, done, total)
        elif kind == "ready":
            link.state = "ready"
            link.phase = None
            self.output_rank = message[2]
            self.handler_info = message[3] if len(message) > 3 else {}
            self.slots = int(self.handler_info.get("slots", 0))
            self._event(link.rank, "ready", None, None)
            if len(self.ranks) == self.spec.world_size and all(r.state == "ready" for r in self.ranks.values()):
                self._event(None, "ready", None, None)
                _resolve(self._ready, None)
        elif kind == "metrics" and self.spec.on_metrics is not None:
            self.spec.on_metrics(message[1])
        elif kind == "spare_ready" and self.spec.spare:
            link.state = "spare"
            if len(self.ranks) == self.spec.nproc and all(r.state == "spare" for r in self.ranks.values()):
                _resolve(self._ready, None)
        elif kind == "init_failed":
            link.state = "failed"
            _, rank, text, trace = message
            self._event(rank, "failed", None, None, text)
            _resolve(self._ready, WorkerStartError(f"initialize failed on rank {rank}: {text}", trace, permanent=True))

    async def _watch_exit(self) -> None:
        code = await self.process.wait()
        if self.taken_by is not None:
            return  # a spare's torchrun, watched now by the group that took it
        if not self._ready.done():
            tail = self.log_tail(lines=20)
            _resolve(self._ready, WorkerStartError(f"worker {self.id} exited with code {code} while starting\n{tail}"))
        self._broken(f"torchrun of worker {self.id} exited with code {code}")

    # ---- serving ----------------------------------------------------------------------------
    def dispatch(self, batch: list[PendingRequest], timeout: float) -> None:
        """Send a batch to every rank; the answer arrives through ``_handle``."""
        self.batch = batch
        self._batch_id += 1
        self.state = WorkerState.BUSY
        frame = ipc.pack(("batch", self._batch_id, [(r.payload, r.content_type, r.meta) for r in batch]))
        for link in self.ranks.values():
            link.writer.write(frame)
        # One lazily re-armed timer instead of a TimerHandle created and cancelled per batch.
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        if self._timer is None or self._timer.when() > self._deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(self._deadline, self._check_deadline, timeout)

    def _check_deadline(self, timeout: float) -> None:
        self._timer = None
        if self.batch is None or self.state != WorkerState.BUSY:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:  # a later batch than the one the timer was set for
            self._timer = loop.call_at(self._deadline, self._check_deadline, timeout)
            return
        self._timed_out(timeout)

    def _timed_out(self, timeout: float) -> None:
        self.fail_batch(RequestFailed(504, f"no answer within responseTimeout={timeout:g}s; "
                                            f"worker {self.id} is being replaced"))
        self._broken(f"worker {self.id} timed out after {timeout:g}s")

    def _finish_batch(self) -> None:
        self.batch = None
        if self.state == WorkerState.BUSY:
            self.state = WorkerState.READY
            self._on_batch_done(self)

    def fail_batch(self, error: RequestFailed) -> None:
        for request in self.batch or ():
            request.fail(error)
        self.requests.fail_all(error)

    def _broken(self, reason: str) -> None:
        """A rank or torchrun went away, or a batch timed out: the whole group is done."""
        if not self._ready.done():
            _resolve(self._ready, WorkerStartError(reason))
            return
        if self.state not in (WorkerState.READY, WorkerState.BUSY):
            return  # already stopping, failed or being replaced
        self.fail_batch(RequestFailed(502, f"{reason}; the request was lost with it and the worker is restarting"))
        self.batch = None
        self.state = WorkerState.RESTARTING
        self._spawn(self._kill_then_report(reason))

    async def _kill_then_report(self, reason: str) -> None:
        await self.kill()
        self._on_broken(self, reason)

    # ---- stopping -----------------------------------------------------------------------------
    async def stop(self, grace: float = 5.0) -> None:
        """Ask the ranks to finish, then make sure every process of the group is gone."""
        self.state = WorkerState.STOPPING
        _resolve(self._ready, WorkerStartError(f"worker {self.id} was stopped while starting"))
        for link in self.ranks.values():
            with contextlib.suppress(Exception):
                link.writer.write(ipc.pack(("stop",)))
        if self.process and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.process.wait(), grace)
        await self.kill()
        self.state = WorkerState.STOPPED

    async def kill(self) -> None:
        """SIGKILL torchrun and every rank we know of; wait until torchrun is reaped."""
        remote = None
        if self.spec.remote is not None:  # the agents end their shares (their pids are not ours)
            remote = asyncio.ensure_future(self.spec.remote.stop())
        local_pids = [link.pid for link in self.ranks.values() if link.node is None]
        for pid in local_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.process and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        await _wait_gone(local_pids, timeout=5.0)
        if remote is not None:
            await remote
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.requests.stop_watching()
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in self.ranks.values():
            link.writer.close()

    # ---- description --------------------------------------------------------------------------
    def _event(self, rank: int | None, phase: str, done, total, message: str | None = None) -> None:
        """One start-up event (the engine's, or a rank's ``phase`` message) for ``.../events``."""
        if self.spec.events is None:
            return
        if rank is not None and self.state == WorkerState.FAILED:
            return  # the group's "failed" ended this start; a rank reporting while it is killed comes too late
        event = {"seq": next(_event_numbers), "worker": self.id, "rank": rank, "phase": phase,
                 "done": done, "total": total, "t": round(time.monotonic() - self.started_at, 3)}
        if message:
            event["message"] = message
        self.spec.events.append(event)

    def describe(self) -> dict:
        ranks = []
        for link in sorted(self.ranks.values(), key=lambda link: link.rank):
            rank = {"rank": link.rank, "pid": link.pid, "state": link.state}
            if link.phase is not None:
                rank["phase"] = link.phase
            ranks.append(rank)
        out = {"id": self.id, "state": self.state.value, "devices": self.spec.devices, "ranks": ranks}
        if self.slots:
            out["slots"] = self.requests.describe()
        if self.spec.remote is not None:
            self.spec.remote.describe_into(self, out)
        return out

    def send_to_leader(self, message: tuple) -> None:
        """A continuous-batching group hears about requests through its leader (output) rank only."""
        self.ranks[self.output_rank].writer.write(ipc.pack(message))

    def slots_changed(self) -> None:
        """A request ended: busy/ready follows whether any is held, and the owner may send more."""
        if self.state in (WorkerState.READY, WorkerState.BUSY):
            self.state = WorkerState.BUSY if self.requests.held else WorkerState.READY
            self._on_batch_done(self)

    def log_tail(self, lines: int = 50, rank: int | None = None) -> str:
        paths = [] if rank is not None else [self.agent_log]
        paths += [os.path.join(self.spec.log_dir, f"rank{r}.log") for r in ([rank] if rank is not None else range(self.spec.world_size))]
        return "\n".join(read_tail(path, lines) for path in paths).strip()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def read_tail(path: str, lines: int) -> str:
    """The last ``lines`` lines of a log file, reading at most 256 KiB of it."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - (256 << 10)))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""


def _resolve(future: asyncio.Future, value) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
        future.exception()
    else:
        future.set_result(value)


async def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while pid_alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
