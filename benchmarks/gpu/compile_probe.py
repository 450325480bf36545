"""Probe: would fusing the decode step (torch.compile/inductor) under the same CUDA graph lower the
GPU floor of the static path? Times one captured decode step, eager kernels vs inductor kernels,
and checks 32 greedy tokens agree (bf16, batch 1 and 16, the bench model).

    python benchmarks/gpu/compile_probe.py --out probe.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(model, batch: int, compiled: bool, steps: int = 32) -> dict:
    import torch

    from lmjupyter.handlers.parallel.families import cache_kwarg
    from lmjupyter.handlers.parallel.static_decode import _Shape

    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (batch, 16), device="cuda:0")
    mask = torch.ones_like(ids)
    pos = torch.arange(16, device="cuda:0").expand(batch, 16)
    shape = _Shape(model, cache_kwarg(model), batch, 256, torch.device("cuda:0"), torch.bfloat16)
    t0 = time.perf_counter()
    if compiled:
        shape._step = torch.compile(shape._step, dynamic=False)
    logits = shape.prefill(ids, mask, pos)
    tokens = [logits.argmax(-1)]
    shape.ids.copy_(tokens[-1][:, None])
    shape.pos.copy_(pos[:, -1:] + 1)
    shape.capture()
    torch.cuda.synchronize()
    setup = time.perf_counter() - t0
    for _ in range(steps - 1):
        shape.graph.replay()
        tokens.append(shape.logits.argmax(-1))
        shape.ids.copy_(tokens[-1][:, None])
        shape.pos.add_(1)
    torch.cuda.synchronize()
    n = 150
    for c in shape._counters():
        c.fill_(16)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        shape.graph.replay()
    torch.cuda.synchronize()
    return {"ms_per_replay": (time.perf_counter() - t0) / n * 1e3, "setup_s": setup,
            "tokens": torch.stack(tokens, 1).tolist()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    import torch
    from decode_bench import build_model
    from transformers import AutoModelForCausalLM

    root = Path(tempfile.mkdtemp())
    model_dir = build_model(root, 8, 1024, 8, 2)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda:0").eval()
    results = {}
    for batch in (1, 16):
        eager = run(model, batch, compiled=False)
        try:
            fused = run(model, batch, compiled=True)
        except Exception as exc:  # noqa: BLE001 - a probe: report what failed
            results[f"b{batch}"] = {"eager_ms": eager["ms_per_replay"], "compiled_error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(json.dumps(results[f"b{batch}"]), flush=True)
            continue
        same = [a == b for a, b in zip(eager["tokens"], fused["tokens"])]
        first_diff = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
                      for a, b in zip(eager["tokens"], fused["tokens"])]
        results[f"b{batch}"] = {"eager_graph_ms": eager["ms_per_replay"], "compiled_graph_ms": fused["ms_per_replay"],
                                "compile_and_capture_s": fused["setup_s"], "rows_identical_32_tokens": sum(same),
                                "rows": len(same), "first_divergence": first_diff}
        print(json.dumps(results[f"b{batch}"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
