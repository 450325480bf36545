"""TorchServe's continuous batching for TorchServe-style handlers (``continuousBatching: true``).

TorchServe calls such a handler once per *iteration* with the requests running now:
the ones that joined since the last call and the ones not done yet. The handler
keeps each request's state in ``context.cache`` under its request id (stable across
iterations), answers one result per request, and says which are done through
``context.stopping_criteria[idx](result)``. A result of a request that goes on is
streamed to its client; the last one ends it. Requests that left (done, or their
client went away) are simply not in the next call's batch.

Here the worker says ``slots`` (its ``batchSize``) when ready, so the server hands it
requests whenever it holds fewer (lmjupyter.engine.slots). The leader (answering)
rank polls its socket between iterations and decides the batch; in a group of
several ranks it broadcasts the batch so that every rank's handler runs the same
call (their collectives must pair up), and only the leader answers.
"""
from __future__ import annotations

import uuid
from collections import deque

HEARTBEAT_S = 5.0


class IterationBatch:
    """The requests running, in arrival order, and those waiting for a slot."""

    def __init__(self, slots: int):
        self.slots = slots
        self.running: dict[int, tuple] = {}   # rid -> (payload, content type, meta, stream)
        self.waiting: deque[tuple[int, tuple]] = deque()

    def add(self, rid: int, payload: bytes, content_type: str, stream: bool, meta: dict | None) -> None:
        meta = dict(meta or {})
        meta.setdefault("id", str(uuid.uuid4()))   # the handler's cache key: the same every iteration
        self.waiting.append((rid, (payload, content_type, meta, stream)))

    def cancel(self, rid: int) -> bool:
        if self.running.pop(rid, None) is not None:
            return True
        before = len(self.waiting)
        self.waiting = deque(entry for entry in self.waiting if entry[0] != rid)
        return len(self.waiting) != before

    def admit(self) -> None:
        while self.waiting and len(self.running) < self.slots:
            rid, request = self.waiting.popleft()
            self.running[rid] = request


def serve_iterations(channel, handler, ctx, leader_rank: int, slots: int) -> int:
    """The serve loop of a worker whose TorchServe-style handler batches continuously."""
    if ctx.rank != leader_rank:
        return _follow(handler, leader_rank)
    batch = IterationBatch(slots)
    while True:
        messages = channel.poll(0.0 if batch.running or batch.waiting else HEARTBEAT_S)
        if messages is None:
            _broadcast(ctx, ("stop",))
            return 0
        events: list[tuple] = []
        for message in messages:
            if message[0] == "add":
                _, rid, payload, content_type, stream, *rest = message
                batch.add(rid, payload, content_type, stream, rest[0] if rest else None)
            elif message[0] == "cancel":
                if batch.cancel(message[1]):
                    events.append(("done", message[1], (499, "application/json",
                                                        b'{"error": {"message": "cancelled by the client"}}')))
            elif message[0] == "stop":
                _broadcast(ctx, ("stop",))
                return 0
        batch.admit()
        if batch.running:
            rids = list(batch.running)
            items = [batch.running[rid][:3] for rid in rids]
            _broadcast(ctx, ("run", items))
            for rid, (answer, done) in zip(rids, handler.run_iteration(items)):
                if done:
                    del batch.running[rid]
                    events.append(("done", rid, answer))
                elif batch.running[rid][3]:
                    events.append(("partial", rid, answer))
        elif not messages:
            _broadcast(ctx, ("idle",))
        if events:
            channel.send(("events", events, {"running": len(batch.running), "waiting": len(batch.waiting),
                                             "generated": 0}))
        updates = handler.drain_metrics()
        if updates:
            channel.send(("metrics", updates))


def _broadcast(ctx, message: tuple):
    """The leader's decision to every rank (nothing to do for one rank)."""
    if ctx.world_size <= 1:
        return message
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=ctx.rank)
    return box[0]


def _follow(handler, leader_rank: int) -> int:
    import torch.distributed as dist

    while True:
        box = [None]
        dist.broadcast_object_list(box, src=leader_rank)
        message = box[0]
        if message[0] == "stop":
            return 0
        if message[0] == "run":
            handler.run_iteration(message[1])
            handler.drain_metrics()

