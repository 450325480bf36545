"""Run the CausalLMHandler on every rank of a torchrun group, as a worker would, on both paths.

    torchrun ... driver.py SPEC.json OUT_DIR

SPEC: {"models": {name: model_dir}, "config": model-config mapping,
"batch": [request, ...]}. For each model and each generation path (``per_batch``:
``handle`` on the whole batch; ``continuous``: the leader's step loop, the
other ranks following its plans), each rank writes OUT_DIR/<name>.<path>.rank<r>.json
with its answers, the partials it streamed, its output_rank, the parameter
elements it holds and its peak RSS. The continuous path runs the batch twice:
all at once, then staggered (requests join a running batch, and leave it early).
"""
import json
import os
import resource
import sys
from pathlib import Path

from lmjupyter.handlers.causal_lm import CausalLMHandler
from lmjupyter.worker.context import Context


PATHS = {"per_batch": {"continuousBatching": False}, "continuous": {}}


def local_numel(handler) -> int:
    """Parameter elements this rank holds (its shards only)."""
    if handler.generation is not None:
        weights = handler.generation.executor.model.w
        tensors = [t for t in (weights.embed, weights.positions, weights.norm, weights.norm_bias, weights.head)
                   if t is not None] + [t for layer in weights.layers for t in vars(layer).values() if t is not None]
        return sum({t.data_ptr(): t.numel() for t in tensors}.values())
    from torch.distributed.tensor import DTensor

    module = getattr(handler.runner, "model", None) or handler.runner.stage
    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in module.parameters())


def per_batch(handler, ctx, batch, streamed):
    return handler.handle(batch, ctx), handler.handle(batch, ctx)  # the second reuses the schedules


def continuous(handler, batch, streamed):
    """Leader: the batch all at once, then staggered; the other ranks follow until the leader stops."""
    generation = handler.generation
    if generation.leader is None:
        generation.follow()
        return None, None
    leader = generation.leader
    rounds = []
    for staggered in (False, True):
        answers, partials = {}, {i: [] for i in range(len(batch))}
        pending = list(enumerate(batch))
        steps = 0
        while len(answers) < len(batch):
            if pending and (not staggered or steps % 3 == 0):
                rid, item = pending.pop(0)
                events = leader.add(rid, item, stream=True)
            else:
                events = leader.step() if leader.busy else []
            for kind, rid, (status, _, body) in events:
                value = json.loads(body)
                if kind == "partial":
                    partials[rid].append(value)
                else:
                    answers[rid] = value
            steps += 1
            assert steps < 10_000, "the leader did not finish the batch"
        rounds.append([answers[i] for i in range(len(batch))])
        streamed.append([partials[i] for i in range(len(batch))])
    leader.stop()
    return rounds


def main(spec_path: str, out_dir: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    for name, model_dir in spec["models"].items():
        for path, extra in PATHS.items():
            streamed = []
            ctx = Context(
                model_name=name, model_dir=model_dir, model_yaml_config={**spec["config"], **extra},
                rank=rank, local_rank=int(os.environ.get("LOCAL_RANK", 0)), world_size=world,
                device="cpu", _send_intermediate=streamed.append,
            )
            handler = CausalLMHandler()
            handler.initialize(ctx)
            assert (handler.generation is not None) == (path == "continuous"), handler.per_batch_reason
            if path == "per_batch":
                answers, again = per_batch(handler, ctx, spec["batch"], streamed)
            else:
                answers, again = continuous(handler, spec["batch"], streamed)
            record = {
                "answers": answers, "again": again, "streamed": streamed,
                "output_rank": handler.output_rank(ctx),
                "local_numel": local_numel(handler),
                "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
            Path(out_dir, f"{name}.{path}.rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:3])
