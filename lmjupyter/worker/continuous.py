"""The serve loop of a rank whose handler batches continuously (the built-in causal-LM handler).

Only the leader rank talks to the server about requests: it polls its socket
between steps (never blocking while sequences run), hands new requests and
cancels to the :class:`~lmjupyter.generation.leader.Leader`, runs a step, and sends
that step's events in one frame. The other ranks follow the leader's plans. When
nothing runs, the leader waits on its socket and, every ``HEARTBEAT_S``, tells the
others it is idle, so that their wait for a plan never hits the process group's
timeout. A failed step in a one-rank worker fails the requests it held (500, or 503
when the device ran out of memory) and the worker carries on; in a group, the
rank exits without answering and the server fails the group's requests (502) and
replaces it: a step's collectives cannot be resumed part-way, and the usual cause
is a peer that died.
"""
from __future__ import annotations

import traceback

from lmjupyter.ipc import BlockingChannel
from lmjupyter.worker.codec import BadRequestBody, decode_request, encode_answer

HEARTBEAT_S = 5.0


def serve_continuous(channel: BlockingChannel, generation, ctx) -> int:
    if generation.leader is None:
        generation.follow()
        return 0
    leader = generation.leader
    while True:
        messages = channel.poll(0.0 if leader.busy else HEARTBEAT_S)
        if messages is None:   # the server went away
            leader.stop()
            return 0
        events: list[tuple] = []
        for message in messages:
            kind = message[0]
            if kind == "add":
                _, rid, payload, content_type, stream = message[:5]
                item = decode_request(payload, content_type)
                events += [("done", rid, encode_answer(item))] if isinstance(item, BadRequestBody) \
                    else leader.add(rid, item, stream)
            elif kind == "cancel":
                events += leader.cancel(message[1])
            elif kind == "stop":
                leader.stop()
                _send(channel, events, leader)
                return 0
        if leader.busy:
            try:
                events += leader.step()
            except Exception as exc:  # noqa: BLE001 - the clients must hear why
                traceback.print_exc()
                if ctx.world_size > 1:
                    raise  # often a peer that died: the server fails the group's requests (502) and restarts it
                events += leader.fail_all(exc)
        elif not messages:
            leader.heartbeat()
        if events:
            _send(channel, events, leader)


def _send(channel: BlockingChannel, events: list[tuple], leader) -> None:
    running, waiting = leader.scheduler.counts()
    channel.send(("events", events, {"running": running, "waiting": waiting, "generated": leader.generated_total}))
