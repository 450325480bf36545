"""The server's side of a continuous-batching worker: the requests it holds, by slot.

A group whose handler batches continuously (the built-in causal-LM handler) says
``slots`` when its ranks are ready. The served model then hands it a request
whenever it holds fewer than that (plus a quarter more, which wait in the leader's
own queue so that no slot stays empty for a round trip), not only when it is idle. Each request gets an
id; its leader rank streams back ``events`` — partial results and the final answer
— for many requests in one frame per step. A client that goes away cancels its
request here (``PendingRequest.cancelled``), which tells the leader to free the
slot at its next step. A group that sends nothing for ``responseTimeout`` seconds
while it holds requests is taken for hung and replaced, as a per-batch group is
when one batch overruns.
"""
from __future__ import annotations

import asyncio
import time

from lmjupyter.engine.request import PendingRequest, RequestFailed
from lmjupyter.engine.states import WorkerState


class SlotRequests:
    def __init__(self, group):
        self.group = group
        self.held: dict[int, PendingRequest] = {}
        self.metrics = None          # the model's ModelMetrics, set by the served model
        self.stats = {"running": 0, "waiting": 0, "generated": 0}
        self._next_id = 0
        self._progress = 0.0         # loop time of the last frame from the leader
        self._timer: asyncio.TimerHandle | None = None

    @property
    def free(self) -> int:
        """Requests this group can take now: its slots, plus a few to wait in its own queue, so that
        a slot freed by a finished sequence is filled at the next step, not one round trip later."""
        return self.group.slots + max(1, self.group.slots // 4) - len(self.held)

    def add(self, request: PendingRequest) -> None:
        self._next_id += 1
        rid = self._next_id
        self.held[rid] = request
        request.on_cancel = lambda _request, rid=rid: self._cancel(rid)
        self.group.send_to_leader(("add", rid, request.payload, request.content_type, request.partials is not None,
                                   request.meta))
        self.group.state = WorkerState.BUSY
        if len(self.held) == 1:
            self._progress = asyncio.get_running_loop().time()
            self._watch()

    def _cancel(self, rid: int) -> None:
        if rid in self.held and self.group.state in (WorkerState.READY, WorkerState.BUSY):
            self.group.send_to_leader(("cancel", rid))
            if self.metrics is not None:
                self.metrics.cancelled()

    def on_events(self, events: list, stats: dict) -> None:
        self._progress = asyncio.get_running_loop().time()
        now = time.perf_counter()
        ended = False
        for kind, rid, answer in events:
            request = self.held.get(rid)
            if request is None:
                continue
            if kind == "partial":
                self._timed_partial(request, now)
                request.partial(answer)
            else:
                del self.held[rid]
                request.answer(answer)
                ended = True
        if self.metrics is not None:
            self.metrics.generated(stats.get("generated", 0) - self.stats.get("generated", 0))
        self.stats = stats
        if self.metrics is not None:
            self.metrics.sequences_changed()
        if ended:
            self.group.slots_changed()

    def _timed_partial(self, request: PendingRequest, now: float) -> None:
        if self.metrics is not None:
            if request.first_partial == 0.0:
                self.metrics.first_token(now - request.started)
            else:
                self.metrics.inter_token(now - request.last_partial)
        if request.first_partial == 0.0:
            request.first_partial = now
        request.last_partial = now

    def fail_all(self, error: RequestFailed) -> None:
        held, self.held = self.held, {}
        for request in held.values():
            request.fail(error)
        self.stats = {"running": 0, "waiting": 0, "generated": self.stats.get("generated", 0)}

    # ---- a group that stops making progress -----------------------------------------------
    def _watch(self) -> None:
        if self._timer is None:
            timeout = float(self.group.spec.config.get("responseTimeout", 120))
            self._timer = asyncio.get_running_loop().call_at(self._progress + timeout, self._check, timeout)

    def _check(self, timeout: float) -> None:
        self._timer = None
        if not self.held or self.group.state not in (WorkerState.READY, WorkerState.BUSY):
            return
        if asyncio.get_running_loop().time() < self._progress + timeout:
            self._watch()
            return
        self.fail_all(RequestFailed(504, f"worker {self.group.id} sent nothing for responseTimeout={timeout:g}s "
                                         "while it held requests; it is being replaced"))
        self.group._broken(f"worker {self.group.id} made no progress for {timeout:g}s")

    def stop_watching(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def describe(self) -> dict:
        return {"total": self.group.slots, "held": len(self.held),
                "running": self.stats.get("running", 0), "waiting": self.stats.get("waiting", 0)}
