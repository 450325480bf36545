"""What each torchrun rank runs: connect to the server, load the handler, serve batches.

Started by torchrun as ``python -m lmjupyter.worker.main SPEC_JSON``. The spec
file (written by the server into its private run directory) names the socket,
the model, the handler and the config. A warm spare's spec file has no model:
its ranks import torch, say ``spare_ready`` and wait for the deploy that takes
the group to send the spec as a ``("spec", {...})`` message. Every rank receives
every batch; only the output rank (by default rank 0, the last rank for pipelines,
or what the handler's ``output_rank(ctx)`` says) sends answers back. A
TorchServe-style handler is wrapped (lmjupyter.compat.torchserve.adapter) and gets
each batch's raw requests, with the headers the HTTP layer saw, through ``run_batch``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import traceback

from lmjupyter.ipc import BlockingChannel
from lmjupyter.worker.codec import BadRequestBody, decode_request, encode_answer, encode_answers
from lmjupyter.worker.context import Context
from lmjupyter.worker.deathsig import die_with_parent


def main(argv: list[str]) -> int:
    die_with_parent(signal.SIGKILL)
    with open(argv[0]) as f:
        spec = json.load(f)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    _redirect_output(os.path.join(spec["log_dir"], f"rank{rank}.log"))

    channel = BlockingChannel(spec["socket"])
    channel.send(("hello", rank, os.getpid()))
    if spec.get("spare"):
        spec = _wait_as_spare(channel, rank)
        if spec is None:
            return 0
        _redirect_output(os.path.join(spec["log_dir"], f"rank{rank}.log"))
    config = spec["config"]
    gpu = config.get("deviceType") == "gpu"
    ctx = Context(
        model_name=spec["model_name"], model_dir=spec["model_dir"], model_yaml_config=config,
        model_version=spec.get("model_version"),
        rank=rank, local_rank=local_rank, world_size=world_size,
        device=f"cuda:{local_rank}" if gpu else "cpu", manifest=spec.get("manifest") or {},
        system_properties={"model_dir": spec["model_dir"], "gpu_id": local_rank if gpu else None,
                           "batch_size": config.get("batchSize", 1), "server_name": "lmjupyter",
                           "server_version": spec.get("server_version", ""), "limit_max_image_pixels": True},
    )
    try:
        if world_size > 1 or gpu:
            # The group's timeout also bounds every collective of a long generation; a hang is
            # caught sooner by the server's responseTimeout, which kills the whole group.
            _init_distributed(gpu, world_size, max(spec.get("startup_timeout", 120), spec.get("response_timeout", 120)) + 60)
        from lmjupyter.compat.torchserve.adapter import adapt_handler
        from lmjupyter.worker.loader import load_handler
        handler = adapt_handler(load_handler(spec["handler"], spec["model_dir"]), spec["handler"], ctx.manifest)
        handler.initialize(ctx)
        output_rank = _output_rank(handler, ctx)
    except BaseException as exc:  # the client must see why loading failed
        channel.send(("init_failed", rank, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        traceback.print_exc()
        return 1
    print(f"rank {rank}/{world_size} ready (pid {os.getpid()}, output rank {output_rank})", flush=True)
    generation = getattr(handler, "generation", None)
    if generation is not None:  # the handler batches continuously: requests join and leave at every step
        from lmjupyter.worker.continuous import serve_continuous

        channel.send(("ready", rank, output_rank, {"slots": generation.slots}))
        return serve_continuous(channel, generation, ctx)
    # the server then passes each request's headers and id on (lmjupyter.compat.torchserve.meta)
    info = {"request_rows": "torchserve"} if _takes_raw_requests(handler) else {}
    if info and config.get("continuousBatching") is True:   # TorchServe's iteration-level handlers
        from lmjupyter.compat.torchserve.continuous import serve_iterations

        slots = int(config.get("batchSize", 1))
        channel.send(("ready", rank, output_rank, {**info, "slots": slots}))
        return serve_iterations(channel, handler, ctx, output_rank, slots)
    channel.send(("ready", rank, output_rank, info))
    return serve(channel, handler, ctx, answers=(rank == output_rank))


def _takes_raw_requests(handler) -> bool:
    """A TorchServe-style handler, wrapped: it decodes and encodes requests itself (``run_batch``)."""
    from lmjupyter.compat.torchserve.adapter import TorchServeHandler

    return isinstance(handler, TorchServeHandler)


def _wait_as_spare(channel: BlockingChannel, rank: int) -> dict | None:
    """Do now what every start spends its first second on, then wait for a model's spec."""
    import torch  # noqa: F401
    import torch.distributed  # noqa: F401

    print(f"spare rank {rank} ready (pid {os.getpid()}): torch imported, waiting for a model", flush=True)
    channel.send(("spare_ready", rank))
    message = channel.receive()
    if message is None or message[0] != "spec":
        return None  # "stop", or the server went away
    return message[1]


def serve(channel: BlockingChannel, handler, ctx: Context, answers: bool) -> int:
    """Run batches until the server says stop or goes away."""
    raw = _takes_raw_requests(handler)
    while True:
        message = channel.receive()
        if message is None or message[0] == "stop":
            return 0
        _, batch_id, items = message
        if raw:
            _serve_raw(channel, handler, ctx, answers, batch_id, items)
            continue
        try:
            decoded = [decode_request(payload, content_type) for payload, content_type, _meta in items]
            good = [i for i, item in enumerate(decoded) if not isinstance(item, BadRequestBody)]
            if answers:
                ctx._send_intermediate = _partial_sender(channel, batch_id, good)
            results = handler.handle([decoded[i] for i in good], ctx) if good else []
            if answers:
                _check_length(results, len(good))
                for i, result in zip(good, results):
                    decoded[i] = result  # bad bodies keep their error, answered with 400
                channel.send(("result", batch_id, encode_answers(decoded)))
        except BaseException as exc:
            traceback.print_exc()
            channel.send(("error", batch_id, ctx.rank, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise


def _serve_raw(channel: BlockingChannel, handler, ctx: Context, answers: bool, batch_id: int, items) -> None:
    """One batch of a handler that decodes and encodes requests itself (``run_batch``)."""
    try:
        sender = _partial_sender(channel, batch_id, list(range(len(items))), encode=None) if answers else None
        encoded = handler.run_batch(items, sender)
        if answers:
            _check_length(encoded, len(items))
            channel.send(("result", batch_id, encoded))
            updates = handler.drain_metrics()
            if updates:
                channel.send(("metrics", updates))
        else:
            handler.drain_metrics()
    except BaseException as exc:
        traceback.print_exc()
        channel.send(("error", batch_id, ctx.rank, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise


def _partial_sender(channel: BlockingChannel, batch_id: int, positions: list[int], encode=encode_answer):
    """Partials come per handled request; the server wants them by position in the batch.
    ``encode=None``: the partials come already encoded."""
    def send(partials):
        _check_length(partials, len(positions))
        # None means "nothing new for this request" (e.g. it already finished): send nothing for it
        channel.send(("partial", batch_id, [(i, encode(p) if encode else p) for i, p in zip(positions, partials)
                                            if p is not None]))
    return send


def _check_length(answers, expected: int) -> None:
    if not isinstance(answers, (list, tuple)):
        raise TypeError(f"handler returned {type(answers).__name__}; expected a list with one answer per request")
    if len(answers) != expected:
        raise ValueError(f"handler returned {len(answers)} answers for a batch of {expected} requests")


def _output_rank(handler, ctx: Context) -> int:
    chooser = getattr(handler, "output_rank", None)
    if callable(chooser):
        return int(chooser(ctx))
    return ctx.world_size - 1 if ctx.parallel_type in ("pp", "pptp") else 0


def _init_distributed(gpu: bool, world_size: int, timeout_s: int) -> None:
    """One default process group for the handler; gloo for CPU tensors even on GPU machines."""
    import datetime

    import torch
    import torch.distributed as dist

    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if world_size > 1 and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if gpu else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))


def _redirect_output(path: str) -> None:
    """Each rank writes its own log file, which ``logs`` reads back per rank."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
