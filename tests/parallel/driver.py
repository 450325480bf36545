"""Run the CausalLMHandler on every rank of a torchrun group, as a worker would.

    torchrun ... driver.py SPEC.json OUT_DIR

SPEC: {"models": {name: model_dir}, "config": model-config mapping,
"batch": [request, ...]}. Each rank writes OUT_DIR/<name>.rank<r>.json with
its final answer, the partials it streamed, its output_rank and its peak RSS.
"""
import json
import os
import resource
import sys
from pathlib import Path

from lmjupyter.handlers.causal_lm import CausalLMHandler
from lmjupyter.worker.context import Context


def local_numel(handler) -> int:
    """Parameter elements this rank holds (its shards only)."""
    from torch.distributed.tensor import DTensor

    module = getattr(handler.runner, "model", None) or handler.runner.stage
    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in module.parameters())


def main(spec_path: str, out_dir: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    for name, model_dir in spec["models"].items():
        streamed = []
        ctx = Context(
            model_name=name, model_dir=model_dir, model_yaml_config=spec["config"],
            rank=rank, local_rank=int(os.environ.get("LOCAL_RANK", 0)), world_size=world,
            device="cpu", _send_intermediate=streamed.append,
        )
        handler = CausalLMHandler()
        handler.initialize(ctx)
        answers = handler.handle(spec["batch"], ctx)
        again = handler.handle(spec["batch"], ctx)  # a second batch reuses the schedules
        record = {
            "answers": answers, "again": again, "streamed": streamed,
            "output_rank": handler.output_rank(ctx),
            "local_numel": local_numel(handler),
            "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }
        Path(out_dir, f"{name}.rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:3])
