"""A deployed model: its request queue, its batcher and its worker groups.

Requests go straight to an idle worker when there is one, so an idle server adds
no batching delay; while every worker is busy they wait in a bounded queue, and
the next worker to finish takes up to ``batchSize`` of them at once. Batches
therefore form exactly when they pay off. Under load (the last batch held more
than one request) a request that finds a worker idle waits for the end of the
current event-loop turn, so that the others that arrived with it join its batch:
microseconds, against ~80 us of server CPU per batch (benchmarks/RESULTS.md).
(TorchServe instead holds every batch open for ``maxBatchDelay``; here that key
bounds nothing and is kept for compatibility.)

A worker whose handler batches continuously (``worker.slots`` > 0) is not given
batches: it is given single requests whenever it holds fewer than ``slots``, the
least loaded worker first, and its requests join its running batch at the next
decode step (:mod:`lmjupyter.engine.slots`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable

from lmjupyter.config import ModelConfig
from lmjupyter.engine.metrics import ModelMetrics
from lmjupyter.engine.request import PendingRequest, RequestFailed
from lmjupyter.engine.states import ModelState, WorkerState
from lmjupyter.engine.worker_group import WorkerGroup, WorkerSpec, WorkerStartError

SERVING = (WorkerState.READY, WorkerState.BUSY)  # the states of a group that may be given requests

log = logging.getLogger("lmjupyter")
MAX_RESTART_ATTEMPTS = 5
HEALTHY_AFTER_S = 60.0
MAX_EVENTS = 2000  # start-up events kept per model version (GET .../events)


def _abandoned(request: PendingRequest) -> None:
    """A request whose client left while it waited in the queue: it ends here (499), so the HTTP
    handler awaiting it finishes and lets its connection go (it used to wait forever: a leak)."""
    request.fail(RequestFailed(499, "the client went away before a worker took the request"))


class ServedModel:
    """Owns the workers of one model version and routes its requests to them."""

    def __init__(self, name: str, version: str, config: ModelConfig, *, handler: str, model_dir: str,
                 make_spec: Callable[[int, list[int]], WorkerSpec], gpu_plan: dict[int, list[int]],
                 metrics: ModelMetrics, on_change: Callable[[], None] = lambda: None):
        self.name, self.version, self.config = name, version, config
        self.handler, self.model_dir = handler, model_dir
        self.state = ModelState.STARTING
        self.error: dict | None = None
        self.warnings: list[str] = []
        self.manifest: dict = {}           # ctx.manifest (an archive's manifest)
        self.python_path: list[str] = []   # put first on the ranks' PYTHONPATH (per-model requirements)
        self.request_meta = False          # its handler wants each request's headers (TorchServe-style)
        self.source: dict = {}             # what the registry snapshot records to deploy it again
        self.target = config.minWorkers
        self.workers: dict[int, WorkerGroup] = {}
        self.events: deque[dict] = deque(maxlen=MAX_EVENTS)  # start-up events of its worker groups
        self.gpus: dict[int, list[int]] = dict(gpu_plan)
        self.metrics = metrics
        self.created = time.time()
        self._make_spec = make_spec
        self._on_change = on_change
        self._queue: deque[PendingRequest] = deque()
        self._idle: list[WorkerGroup] = []       # per-batch workers with nothing to do
        self._slotted: list[WorkerGroup] = []    # ready continuous-batching workers
        self._failures: dict[int, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._last_batch = 0       # size of the batch dispatched last: > 1 means under load
        self._pump_soon = False    # a _pump is scheduled for the end of this event-loop turn
        metrics.sequence_source = self.sequence_counts

    # ---- requests ---------------------------------------------------------------------------
    def submit(self, payload: bytes, content_type: str, stream: bool = False, meta: dict | None = None) -> PendingRequest:
        """Queue one request or refuse it at once (503) when it could not be served."""
        if self.state in (ModelState.FAILED, ModelState.STOPPING):
            reason = f": {self.error['message']}" if self.error else ""
            raise RequestFailed(503, f"model {self.name} is {self.state.value}{reason}")
        if self.config.useJobTicket and not self._idle and not any(w.requests.free > 0 for w in self._slotted):
            raise RequestFailed(503, f"model {self.name}: no idle worker (useJobTicket is on)")
        if len(self._queue) >= self.config.jobQueueSize:
            raise RequestFailed(503, f"model {self.name}: queue is full "
                                     f"({self.config.jobQueueSize} waiting, jobQueueSize)")
        loop = asyncio.get_running_loop()
        request = PendingRequest(payload, content_type, loop.create_future(),
                                 asyncio.Queue() if stream else None, meta)
        self._queue.append(request)
        if self._last_batch > 1 and self._idle and not self.config.useJobTicket:
            if not self._pump_soon:
                self._pump_soon = True
                loop.call_soon(self._deferred_pump)
        else:
            self._pump()
        return request

    def _deferred_pump(self) -> None:
        self._pump_soon = False
        self._pump()

    def _pump(self) -> None:
        """Give queued requests to continuous workers with a free slot, and to idle workers, up to batchSize each."""
        # A group whose rank just died is RESTARTING while it is killed, and forgotten only once it is
        # dead: it must not be handed requests in between (they would go to a closed socket).
        while self._queue and self._slotted:
            serving = [w for w in self._slotted if w.state in SERVING]
            worker = max(serving, key=lambda w: w.requests.free, default=None)
            if worker is None or worker.requests.free <= 0:
                break
            request = self._queue.popleft()
            if request.cancelled:
                _abandoned(request)
            else:
                worker.requests.add(request)
        while self._queue and self._idle:
            worker = self._idle.pop()
            if worker.state != WorkerState.READY:
                continue
            batch = self._take_batch()
            if not batch:
                self._idle.append(worker)
                return
            self._last_batch = len(batch)
            self.metrics.batch(len(batch))
            worker.dispatch(batch, self.config.responseTimeout)
        self.metrics.queue_depth(len(self._queue))

    def _take_batch(self) -> list[PendingRequest]:
        batch: list[PendingRequest] = []
        while self._queue and len(batch) < self.config.batchSize:
            request = self._queue.popleft()
            if request.cancelled:
                _abandoned(request)
            else:
                batch.append(request)
        return batch

    def _worker_free(self, worker: WorkerGroup) -> None:
        """A per-batch worker finished its batch, or a continuous one ended a request."""
        if self.workers.get(worker.id) is not worker:
            return
        if worker.slots:
            if worker.state == WorkerState.READY and len(self.workers) > self.target:
                self._spawn(self._retire(worker))
            else:
                self._pump()
            return
        if worker.state == WorkerState.READY:
            if len(self.workers) > self.target:
                self._spawn(self._retire(worker))
                return
            self._idle.append(worker)
            self._pump()

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Start minWorkers groups; the model is ready when all are, failed if one cannot start."""
        ids = sorted(self.gpus) or list(range(1, self.target + 1))
        results = await asyncio.gather(*(self._start_worker(i) for i in ids), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if self.state == ModelState.STOPPING:
            return
        if errors:
            await self._fail(errors[0])
            return
        self.state = ModelState.READY
        log.info("model %s v%s ready with %d worker(s)", self.name, self.version, len(self.workers))
        self._on_change()

    async def _start_worker(self, worker_id: int) -> WorkerGroup:
        gpus = self.gpus.setdefault(worker_id, [])
        worker = WorkerGroup(self._make_spec(worker_id, gpus), self._worker_free, self._worker_broken)
        self.workers[worker_id] = worker
        try:
            await worker.start()
        except BaseException:
            if self.workers.get(worker_id) is worker:
                del self.workers[worker_id]
            raise
        if self.state == ModelState.STOPPING or self.workers.get(worker_id) is not worker:
            await worker.stop()
            return worker
        self.request_meta = self.request_meta or worker.handler_info.get("request_rows") == "torchserve"
        if worker.slots:
            worker.requests.metrics = self.metrics
            self._slotted.append(worker)
        else:
            self._idle.append(worker)
        self._pump()
        return worker

    def _worker_broken(self, worker: WorkerGroup, reason: str) -> None:
        """A group died or hung: replace it, backing off when it keeps failing."""
        self._forget(worker)
        if self.state == ModelState.STOPPING or self.workers.get(worker.id) is not worker:
            return
        self.metrics.restart()
        healthy = time.monotonic() - worker.started_at > HEALTHY_AFTER_S
        attempt = 1 if healthy else self._failures.get(worker.id, 0) + 1
        self._failures[worker.id] = attempt
        self.error = {"message": f"worker {worker.id} restarting (attempt {attempt}): {reason}"}
        log.warning("model %s: %s", self.name, self.error["message"])
        self._spawn(self._restart(worker.id, attempt))

    async def _restart(self, worker_id: int, attempt: int) -> None:
        await asyncio.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
        if self.state == ModelState.STOPPING or worker_id not in self.workers:
            return
        try:
            await self._start_worker(worker_id)
        except WorkerStartError as exc:
            if exc.permanent or attempt >= MAX_RESTART_ATTEMPTS:
                await self._fail(exc)
            else:
                self._worker_broken_after_start_failure(worker_id, attempt, exc)
            return
        self.error = None
        self._on_change()

    def _worker_broken_after_start_failure(self, worker_id: int, attempt: int, exc: Exception) -> None:
        self.metrics.restart()
        self._failures[worker_id] = attempt + 1
        self.workers.setdefault(worker_id, _Placeholder(worker_id))
        self.error = {"message": f"worker {worker_id} restarting (attempt {attempt + 1}): {exc}"}
        self._spawn(self._restart(worker_id, attempt + 1))

    async def _fail(self, exc: BaseException) -> None:
        """Give up: every worker ends, queued requests get the reason."""
        self.state = ModelState.FAILED
        self.error = {"message": f"model {self.name} failed to start: {exc}",
                      "traceback": getattr(exc, "traceback", "")}
        log.error("%s\n%s", self.error["message"], self.error["traceback"])
        self._drain_queue(RequestFailed(503, self.error["message"]))
        await self._stop_workers()
        self._on_change()

    async def scale(self, count: int, new_gpus: dict[int, list[int]]) -> None:
        """Start or retire whole groups until ``count`` run (busy ones finish their batch first)."""
        self.target = count
        self.gpus.update(new_gpus)
        starts = [self._start_worker(i) for i in new_gpus]
        for worker in sorted(self.workers.values(), key=lambda w: -w.id)[: max(0, len(self.workers) - count)]:
            if worker.state != WorkerState.BUSY:
                starts.append(self._retire(worker))
        self._on_change()
        results = await asyncio.gather(*starts, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            self.error = {"message": f"scaling to {count} workers: {errors[0]}"}
        self._on_change()

    def _forget(self, worker: WorkerGroup) -> None:
        """Stop routing requests to a worker."""
        if worker in self._idle:
            self._idle.remove(worker)
        if worker in self._slotted:
            self._slotted.remove(worker)
        self.metrics.sequences_changed()

    async def _retire(self, worker: WorkerGroup) -> None:
        self._forget(worker)
        self.workers.pop(worker.id, None)
        self.gpus.pop(worker.id, None)
        await worker.stop()
        self._on_change()

    async def stop(self) -> None:
        """Undeploy: refuse new requests, fail queued ones, end every process."""
        self.state = ModelState.STOPPING
        self._drain_queue(RequestFailed(503, f"model {self.name} was undeployed"))
        await self._stop_workers()
        for task in list(self._tasks):
            task.cancel()

    async def _stop_workers(self) -> None:
        workers = list(self.workers.values())
        self.workers.clear()
        self._idle.clear()
        self._slotted.clear()
        for worker in workers:
            worker.fail_batch(RequestFailed(503, f"model {self.name} stopped while the request ran"))
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)

    def _drain_queue(self, error: RequestFailed) -> None:
        while self._queue:
            self._queue.popleft().fail(error)
        self.metrics.queue_depth(0)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- description -------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def sequence_counts(self) -> dict:
        """Continuous batching across the workers: sequences running (each holds a KV-cache slot),
        waiting for one (here and in the workers' queues), and the slots of the ready workers."""
        workers = self._slotted
        running = sum(w.requests.stats.get("running", 0) for w in workers)
        held = sum(len(w.requests.held) for w in workers)
        return {"running": running, "waiting": len(self._queue) + max(0, held - running),
                "slots": sum(w.slots for w in workers)}

    def pids(self) -> list[int]:
        return [r.pid for w in self.workers.values() for r in getattr(w, "ranks", {}).values()]

    def describe(self) -> dict:
        return {
            "name": self.name, "version": self.version, "state": self.state.value,
            "handler": self.handler, "model_dir": self.model_dir,
            "config": self.config.as_yaml_dict(), "target_workers": self.target,
            "workers": [w.describe() for w in sorted(self.workers.values(), key=lambda w: w.id)],
            "queue": {"depth": len(self._queue), "capacity": self.config.jobQueueSize},
            "error": self.error, "warnings": self.warnings, "metrics": self.metrics.summary(),
            **({"sequences": self.sequence_counts()} if self._slotted else {}),
        }


class _Placeholder:
    """Holds a worker's place (and GPUs) while its replacement waits to be started."""

    state = WorkerState.RESTARTING
    batch = None
    slots = 0
    ranks: dict = {}

    def __init__(self, worker_id: int):
        self.id = worker_id

    async def stop(self) -> None:
        pass

    def fail_batch(self, error) -> None:
        pass

    def describe(self) -> dict:
        return {"id": self.id, "state": self.state.value, "devices": "", "ranks": []}
