"""The decode step's matmuls at one to four rows: cuBLAS (``F.linear``) against the Triton GEMV
of ``lmjupyter.generation.triton_kernels``, per weight shape of the 1.1B and 8B Llamas, with the
copy bandwidth measured in the same run; and the rotate-and-store kernel against its PyTorch form.

    python3 benchmarks/gpu/gemv_bench.py --out gemv.json [--quick]

Each timing replays a CUDA graph of the product over as many distinct weight matrices as the
model has layers, as a decode step does, so the weights come from HBM, not from L2. For every
shape it sweeps the kernel's (BLOCK_N, BLOCK_K, num_warps, num_stages) at one row, re-times the
best few at two and four rows, and checks the answer against ``F.linear``; the best configs are
what ``GEMV_CONFIGS`` in triton_kernels.py holds.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lmjupyter.generation import triton_kernels as tk  # noqa: E402
from lmjupyter.generation.fused import split_rotate_store  # noqa: E402

SHAPES = {  # name: (N, K, layers)
    "1.1b qkv": (2560, 2048, 22), "1.1b o": (2048, 2048, 22), "1.1b gate|up": (11264, 2048, 22),
    "1.1b down": (2048, 5632, 22),
    "8b qkv": (6144, 4096, 32), "8b o": (4096, 4096, 32), "8b gate|up": (28672, 4096, 32),
    "8b down": (4096, 14336, 32),
}
DEV = "cuda:0"


def graph_ms(fn, reps: int = 20) -> float:
    """Median ms of one replay of a graph that runs ``fn`` once."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return 2 * src.numel() / (statistics.median(times) / 1e3)


def configs(rows: int, quick: bool):
    space = itertools.product((2, 4, 8, 16, 32), (128, 256, 512, 1024, 2048), (2, 4, 8), (1, 2, 3, 4))
    for block_n, block_k, warps, stages in space:
        # the float32 accumulator: at most ~64 registers a thread
        if triton.next_power_of_2(rows) * block_n * block_k > 64 * 32 * warps:
            continue
        if quick and (stages not in (1, 3) or warps == 2):
            continue
        yield block_n, block_k, warps, stages


def bench_shape(n: int, k: int, layers: int, bandwidth: float, quick: bool) -> dict:
    weights = [torch.randn(n, k, device=DEV, dtype=torch.bfloat16) * 0.02 for _ in range(layers)]
    bytes_read = n * k * 2 * layers
    floor_ms = bytes_read / bandwidth * 1e3
    out: dict = {"N": n, "K": k, "layers": layers, "floor_us_per_matmul": round(floor_ms / layers * 1e3, 2)}
    ranked = []
    for rows in (1, 2, 4):
        x = torch.randn(rows, k, device=DEV, dtype=torch.bfloat16)
        ys = [None] * layers

        def cublas():
            for i, w in enumerate(weights):
                ys[i] = F.linear(x, w)
        cublas_ms = graph_ms(cublas)
        reference = F.linear(x, weights[0]).float()
        row = {"cublas_us": round(cublas_ms / layers * 1e3, 2),
               "cublas_of_bandwidth": round(floor_ms / cublas_ms, 3)}
        candidates = list(configs(rows, quick)) if rows == 1 else [c for _, c in ranked[:6]]
        timed = []
        for config in candidates:
            try:
                got = tk.gemv(x, weights[0], config).float()
                error = ((got - reference).abs().max() / reference.abs().max()).item()

                def triton_run(config=config):
                    for i, w in enumerate(weights):
                        ys[i] = tk.gemv(x, w, config)
                ms = graph_ms(triton_run)
            except Exception as exc:  # noqa: BLE001 - a config that does not compile is skipped
                row.setdefault("failed", {})[str(config)] = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            timed.append((ms, config, error))
        timed.sort()
        if rows == 1:
            ranked = [(ms, config) for ms, config, _ in timed]
        if timed:
            best_ms, best, error = timed[0]
            row.update({"triton_us": round(best_ms / layers * 1e3, 2), "triton_of_bandwidth": round(floor_ms / best_ms, 3),
                        "best_config": list(best), "max_rel_error": round(error, 5),
                        "speedup_vs_cublas": round(cublas_ms / best_ms, 3),
                        "top5": [[round(ms / layers * 1e3, 2), list(c)] for ms, c, _ in timed[:5]],
                        "configs_timed": len(timed)})
        out[f"rows_{rows}"] = row
        print(f"  N={n} K={k} rows={rows}: cublas {row['cublas_us']} us ({row['cublas_of_bandwidth']:.0%}), "
              f"triton {row.get('triton_us')} us ({row.get('triton_of_bandwidth', 0):.0%}) {row.get('best_config')}",
              flush=True)
    del weights
    torch.cuda.empty_cache()
    return out


def bench_rotate_store(layers: int = 22) -> dict:
    """The 1.1B shape's decode rotate-and-store (32 q heads, 4 kv heads, head_dim 64) at 1 and 16 rows."""
    q_heads, kv_heads, d, slots, max_len = 32, 4, 64, 64, 2048
    result = {}
    for rows in (1, 16):
        qkv = torch.randn(rows, 1, (q_heads + 2 * kv_heads) * d, device=DEV, dtype=torch.bfloat16)
        angles = torch.rand(rows, 1, 1, d, device=DEV)
        cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()
        caches = [(torch.zeros(slots + 1, kv_heads, max_len, d, device=DEV, dtype=torch.bfloat16),
                   torch.zeros(slots + 1, kv_heads, max_len, d, device=DEV, dtype=torch.bfloat16)) for _ in range(2)]
        write_slots = torch.arange(rows, device=DEV)
        write_pos = torch.randint(0, max_len, (rows,), device=DEV)
        args = (q_heads, kv_heads, d)
        q_ref = split_rotate_store(qkv, cos, sin, *caches[0], write_slots, write_pos, *args)
        q_got = tk.rotate_store(qkv, cos, sin, *caches[1], write_slots, write_pos, *args)
        diff = max((q_ref.float() - q_got.float()).abs().max().item(),
                   (caches[0][0].float() - caches[1][0].float()).abs().max().item(),
                   (caches[0][1].float() - caches[1][1].float()).abs().max().item())
        kc, vc = caches[1]

        def torch_run():
            for _ in range(layers):
                split_rotate_store(qkv, cos, sin, kc, vc, write_slots, write_pos, *args)

        def triton_run():
            for _ in range(layers):
                tk.rotate_store(qkv, cos, sin, kc, vc, write_slots, write_pos, *args)
        result[f"rows_{rows}"] = {"torch_us": round(graph_ms(torch_run) / layers * 1e3, 2),
                                  "triton_us": round(graph_ms(triton_run) / layers * 1e3, 2),
                                  "max_abs_diff": diff}
        print(f"  rotate_store rows={rows}: {result[f'rows_{rows}']}", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gemv.json")
    parser.add_argument("--quick", action="store_true", help="a smaller config sweep")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    bandwidth = copy_bandwidth()
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "copy_TB_per_s": round(bandwidth / 1e12, 3), "shapes": {}}
    print(f"copy bandwidth {bandwidth / 1e12:.3f} TB/s", flush=True)
    try:
        results["rotate_store"] = bench_rotate_store()
    except Exception as exc:  # noqa: BLE001
        results["rotate_store"] = {"error": f"{type(exc).__name__}: {exc}"}
        print("rotate_store failed:", exc, flush=True)
    for name in args.shapes.split(","):
        n, k, layers = SHAPES[name]
        print(name, flush=True)
        results["shapes"][name] = bench_shape(n, k, layers, bandwidth, args.quick)
        results["elapsed_s"] = round(time.perf_counter() - started, 1)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps({name: {r: {k: v for k, v in s[r].items() if k in ("cublas_us", "triton_us", "best_config")}
                             for r in ("rows_1", "rows_2", "rows_4") if r in s}
                      for name, s in results["shapes"].items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
