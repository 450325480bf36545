"""Generation on one GPU: the continuous-batching engine against the hardware and HF ``generate``.

    python benchmarks/gpu/generation_bench.py --shape 1.1b --out results.json [--sections a,b,...]

One call measures, on a model of the named shape (lmjupyter.models.shapes: random bf16
weights, saved with save_pretrained), side by side:

* ``roofline``: device-to-device copy bandwidth (bytes read + written) and the decode
  floor it implies, weight bytes / bandwidth;
* ``hf``: HF ``generate`` (greedy, bf16) at batch 1 and 16: ms/token, tok/s;
* ``inproc``: the engine in this process (the built-in handler's Generation, no server):
  the captured decode step replayed alone, and the leader's whole step (plan, launch,
  read, detokenize) at 1, 16 and 64 running sequences; ``compile`` adds the same with
  ``handler.compile`` (inductor) and its compile time; ``torch_kernels`` and
  ``compile_torch_kernels`` the same two with ``handler.kernels: torch`` (no Triton kernels);
* ``profile``: kernels per decode step (and per layer) with the time of the largest,
  for the engine's step and for the old per-batch path's captured step;
* ``server``: a real ``lmjupyter serve``: deploy to ready and to first token, one client
  (ms/token), time to first token on an idle server, 16 clients x 128 tokens, mixed
  budgets 16-256, and Poisson arrivals (benchmarks/serving.py).

Each section records its own error and the run goes on; RESULTS-gpu.md has the readings.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

DEVICE = "cuda:0"
TOKEN = "gpu-bench"
PROMPT = 16


def cuda_ms(fn, reps: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` on the GPU (CUDA events around each call)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def wall(fn, reps: int = 3) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_prompts(batch: int, vocab: int, length: int = PROMPT, seed: int = 0) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(batch)]


# ---- sections ------------------------------------------------------------------------------
def roofline(model_dir: Path, out: dict) -> None:
    import torch

    from lmjupyter.models.shapes import weight_bytes

    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEVICE)   # 1 GiB
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), reps=20)
    bandwidth = 2 * src.numel() / (ms / 1e3)
    weights = weight_bytes(model_dir)
    out["roofline"] = {"copy_TB_per_s": round(bandwidth / 1e12, 3), "weight_GB": round(weights / 1e9, 3),
                       "decode_floor_ms": round(weights / bandwidth * 1e3, 4)}


def hf(model_dir: Path, out: dict, new: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(DEVICE).eval()
    vocab = model.config.vocab_size
    rows = {}
    for batch in (1, 16):
        ids = torch.tensor(random_prompts(batch, vocab), device=DEVICE)

        def run(n):
            return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False)
        t_new, t_one = wall(lambda: run(new), 2), wall(lambda: run(1), 2)
        rows[str(batch)] = {"ms_per_token": round((t_new - t_one) / (new - 1) * 1e3, 3),
                            "tok_per_s": round(batch * new / t_new, 1)}
    out["hf_generate"] = rows
    del model
    torch.cuda.empty_cache()


def _generation(model_dir: Path, slots: int, **handler):
    from lmjupyter.handlers.causal_lm import CausalLMHandler
    from lmjupyter.worker.context import Context

    ctx = Context(model_name="bench", model_dir=str(model_dir), device=DEVICE,
                  model_yaml_config={"deviceType": "gpu", "batchSize": slots,
                                     "handler": {"max_seq_len": 2048, **handler}})
    h = CausalLMHandler()
    started = time.perf_counter()
    h.initialize(ctx)
    return h, time.perf_counter() - started


def _fill(leader, rows: int, vocab: int, budget: int = 1500) -> None:
    for i, ids in enumerate(random_prompts(rows, vocab, seed=rows)):
        leader.add(10_000 * rows + i, {"input_ids": ids, "max_new_tokens": budget, "ignore_eos": True}, stream=False)
    for _ in range(50):          # prefill everyone, then a few decode steps
        leader.step()
    assert leader.scheduler.counts()[0] == rows, leader.scheduler.counts()


def inproc(model_dir: Path, out: dict, key: str = "inproc", **handler) -> None:
    import torch

    h, init_s = _generation(model_dir, 64, **handler)
    gen, leader = h.generation, h.generation.leader
    vocab = h.config.vocab_size
    rows = {"init_s": round(init_s, 2)}
    for batch in (1, 16, 64):
        filled = time.perf_counter()
        _fill(leader, batch, vocab)
        if batch == 1:   # the first requests pay for graph captures (and compiles, with handler.compile)
            rows["first_fill_s"] = round(time.perf_counter() - filled, 2)
        plan = gen.executor.last_plan           # the decode bucket these steps use
        replay = cuda_ms(lambda: gen.executor.graphs.run(plan.rows, plan.length), reps=50) \
            if gen.executor.graphs is not None else None
        t0 = time.perf_counter()
        steps = 100
        for _ in range(steps):
            leader.step()
        torch.cuda.synchronize()
        per_step = (time.perf_counter() - t0) / steps * 1e3
        rows[str(batch)] = {"replay_ms": None if replay is None else round(replay, 4),
                            "leader_step_ms": round(per_step, 4), "tok_per_s": round(batch / per_step * 1e3, 1),
                            "bucket": [plan.rows, plan.length]}
        for rid in list(leader.sequences):
            leader.cancel(rid)
        while leader.busy:
            leader.step()
    rows["host_split_b1_ms"] = _host_split(leader, gen.executor, vocab)
    rows["ttft_inproc_ms"] = _ttft(leader)
    graphs = gen.executor.graphs
    rows["prefill_graph_capture_s"] = {"x".join(map(str, k)): round(v, 3)
                                       for k, v in (gen.executor.prefill_graphs.captured.items()
                                                    if gen.executor.prefill_graphs else [])}
    rows["graph_capture_s"] = {f"{k[0]}x{k[1]}": round(v, 3) for k, v in (graphs.captured.items() if graphs else [])}
    rows["graphs_failed"] = graphs.failed if graphs else "off"
    out[key] = rows
    del h, gen, leader
    torch.cuda.empty_cache()


def _host_split(leader, executor, vocab: int, steps: int = 100) -> dict:
    """Where the leader's step time goes at one running sequence: planning, launching, reading."""
    import torch

    _fill(leader, 1, vocab)
    times = {"plan": 0.0, "launch": 0.0, "read": 0.0}
    torch.cuda.synchronize()
    t_start = time.perf_counter()
    for _ in range(steps):
        a = time.perf_counter()
        plan, book = leader.scheduler.plan()
        b = time.perf_counter()
        leader._settle_slots(book)
        output = executor.run(plan, None)
        output.start_copy(executor.host_buffers)
        c = time.perf_counter()
        previous, leader._pending = leader._pending, (output, book, None)
        if previous is not None:
            leader._read(*previous)
        d = time.perf_counter()
        times["plan"] += b - a
        times["launch"] += c - b
        times["read"] += d - c   # includes waiting for the previous step's tokens
    total = time.perf_counter() - t_start
    for rid in list(leader.sequences):
        leader.cancel(rid)
    while leader.busy:
        leader.step()
    return {k: round(v / steps * 1e3, 4) for k, v in {**times, "total": total}.items()}


def _ttft(leader, trials: int = 10) -> float:
    """Idle engine: add a 16-token request and step until its first token is out (median ms)."""
    times = []
    for trial in range(trials):
        rid = 900_000 + trial
        t0 = time.perf_counter()
        leader.add(rid, {"input_ids": random_prompts(1, 300, seed=trial)[0], "max_new_tokens": 4}, stream=True)
        got = False
        for _ in range(20):
            if any(r == rid for _, r, _ in leader.step()):
                got = True
                break
        times.append(time.perf_counter() - t0)
        assert got
        while leader.busy:
            leader.step()
    return round(statistics.median(times) * 1e3, 3)


def profile(model_dir: Path, out: dict, **handler) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    def census(fn, layers: int) -> dict:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        per_name: dict[str, list[float]] = {}
        for e in kernels:
            per_name.setdefault(e.name, []).append(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0))
        total = sum(sum(v) for v in per_name.values()) / 5
        top = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))[:12]
        return {"kernels_per_step": len(kernels) / 5, "kernels_per_layer": round(len(kernels) / 5 / layers, 1),
                "gpu_us_per_step": round(total, 1),
                "top": [{"kernel": name[:90], "calls_per_step": len(t) / 5, "us_per_step": round(sum(t) / 5, 1)}
                        for name, t in top]}

    result = {}
    h, _ = _generation(model_dir, 16, **handler)
    layers = h.config.num_hidden_layers
    leader, executor = h.generation.leader, h.generation.executor
    _fill(leader, 1, h.config.vocab_size)
    plan = executor.last_plan
    result["engine_graph_b1"] = census(lambda: executor.graphs.run(plan.rows, plan.length), layers)
    result["engine_eager_b1"] = census(lambda: executor._decode_forward(plan.rows, plan.length), layers)
    del h, leader, executor
    torch.cuda.empty_cache()
    # the old per-batch path (HF modules, static cache, one graph per shape)
    from lmjupyter.handlers.causal_lm import CausalLMHandler
    from lmjupyter.worker.context import Context

    ctx = Context(model_name="old", model_dir=str(model_dir), device=DEVICE,
                  model_yaml_config={"deviceType": "gpu", "continuousBatching": False, "handler": {"max_new_tokens": 8}})
    old = CausalLMHandler()
    old.initialize(ctx)
    old.handle([{"input_ids": random_prompts(1, old.config.vocab_size)[0]}], ctx)
    shape = next(iter(old.runner.shapes.values()))
    result["old_per_batch_graph_b1"] = census(lambda: shape.graph.replay(), layers)
    out["profile"] = result
    del old
    torch.cuda.empty_cache()


# ---- through the server ----------------------------------------------------------------------
class Server:
    def __init__(self, root: Path, *extra: str):
        self.log_path = root / f"server{'-'.join(extra)}.log"
        self.log = open(self.log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "lmjupyter.cli", "serve", "--port", "0", "--token", TOKEN,
                                      "--allow-root", "/", *extra], cwd=root, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            match = re.search(r"serving at (http://\S+)", self.log_path.read_text(errors="replace"))
            if match:
                self.url = match.group(1)
                break
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + self.log_path.read_text(errors="replace"))
            time.sleep(0.05)
        else:
            raise RuntimeError("server did not start")
        from lmjupyter.client import Client

        self.client = Client(self.url, TOKEN, timeout=600)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def server(model_dir: Path, root: Path, out: dict, slots: int, quick: bool, handler: dict) -> None:
    import serving

    srv = Server(root)
    result = {}
    try:
        vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        config = {"deviceType": "gpu", "batchSize": slots, "responseTimeout": 300, "startupTimeout": 600,
                  "handler": {"max_seq_len": 2048, **handler}}
        t0 = time.perf_counter()
        try:
            srv.client.deploy("llm", model_dir=str(model_dir), config=config, wait=True)
        except Exception as exc:  # noqa: BLE001 - say so, and measure the rest on the cold start path
            result["default_deploy_failed"] = f"{type(exc).__name__}: {exc}"[:2000]
            result["default_server_log"] = srv.log_path.read_text(errors="replace").splitlines()[-30:]
            srv.client.session.close()
            srv.stop()
            srv = Server(root, "--no-fork-server")
            t0 = time.perf_counter()
            srv.client.deploy("llm", model_dir=str(model_dir), config=config, wait=True)
        ready = time.perf_counter()
        srv.client.predict("llm", {"input_ids": random_prompts(1, vocab)[0], "max_new_tokens": 1})
        result["deploy_to_ready_s"] = round(ready - t0, 2)
        result["deploy_to_first_token_s"] = round(time.perf_counter() - t0, 2)

        def scenario(name, count, prompt, new, mode="closed", clients=16, rate=8.0, stream=True):
            bodies = serving.workload(count, prompt, new, vocab, seed=len(result))
            result[name] = asyncio.run(serving.run(srv.url, TOKEN, "llm", bodies, mode, clients, rate, stream=stream))
            print(name, json.dumps({k: v for k, v in result[name].items() if k != "by_budget"}), flush=True)

        scenario("warmup", 64, (16, 16), (8, 300), clients=64)   # captures the graph buckets
        scenario("one_client_256", 3, (16, 16), (256, 256), clients=1)
        scenario("idle_ttft_16tok_prompt", 20, (16, 16), (2, 2), clients=1)
        scenario("idle_16_token_request", 5, (16, 16), (16, 16), clients=1)
        scenario("c16_x128", 64, (16, 16), (128, 128), clients=16)
        scenario("c16_x128_whole_answers", 64, (16, 16), (128, 128), clients=16, stream=False)
        scenario("c64_x128_whole_answers", 128, (16, 16), (128, 128), clients=64, stream=False)
        mixed = [16, 64, 128, 256]
        bodies = serving.workload(64, (16, 16), (16, 16), vocab, seed=99)
        for i, body in enumerate(bodies):
            body["max_new_tokens"] = mixed[i % 4]
        result["c16_mixed_16_256"] = asyncio.run(serving.run(srv.url, TOKEN, "llm", bodies, "closed", 16))
        print("mixed", json.dumps({k: v for k, v in result["c16_mixed_16_256"].items() if k != "by_budget"}),
              flush=True)
        if not quick:
            for rate in (4.0, 16.0, 64.0):
                scenario(f"poisson_{rate:g}_per_s", 96, (16, 256), (16, 256), mode="poisson", rate=rate)
        result["metrics_tail"] = [line for line in srv.client.metrics().splitlines()
                                  if line.startswith(("lmjupyter_sequences_running_peak", "lmjupyter_generated_tokens_total"))]
    finally:
        out["server"] = result
        srv.client.session.close()
        srv.stop()
        out["server_log_tail"] = srv.log_path.read_text(errors="replace").splitlines()[-15:]


def environment() -> dict:
    import torch
    import transformers

    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="1.1b")
    parser.add_argument("--out", default="generation.json")
    parser.add_argument("--sections", default="roofline,hf,inproc,profile,server")
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--new", type=int, default=64, help="tokens per request for HF generate")
    parser.add_argument("--quick", action="store_true", help="skip the Poisson runs")
    parser.add_argument("--root", default=None)
    parser.add_argument("--handler", default="{}", help="JSON merged into the handler: section (profile, server)")
    args = parser.parse_args(argv)
    from lmjupyter.models.shapes import build_shape

    root = Path(args.root or tempfile.mkdtemp(prefix="genbench-"))
    results: dict = {"environment": environment(), "shape": args.shape, "handler": json.loads(args.handler),
                     "errors": {}}
    t0 = time.perf_counter()
    model_dir = root / f"llama-{args.shape}"
    if not (model_dir / "config.json").exists():
        build_shape(model_dir, args.shape, device=DEVICE)
    results["build_s"] = round(time.perf_counter() - t0, 1)
    sections = {
        "roofline": lambda: roofline(model_dir, results),
        "hf": lambda: hf(model_dir, results, args.new),
        "inproc": lambda: inproc(model_dir, results),
        "compile": lambda: inproc(model_dir, results, key="inproc_compiled", compile=True),
        # the same two with handler.kernels: torch (cuBLAS and PyTorch's ops instead of the Triton kernels)
        "torch_kernels": lambda: inproc(model_dir, results, key="inproc_torch_kernels", kernels="torch"),
        "compile_torch_kernels": lambda: inproc(model_dir, results, key="inproc_compiled_torch_kernels",
                                                compile=True, kernels="torch"),
        "profile": lambda: profile(model_dir, results, **json.loads(args.handler)),
        "server": lambda: server(model_dir, root, results, args.slots, args.quick, json.loads(args.handler)),
    }
    for name in args.sections.split(","):
        started = time.perf_counter()
        try:
            sections[name]()
        except Exception as exc:  # noqa: BLE001 - record and go on
            results["errors"][name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
            print(f"section {name} failed: {exc}", flush=True)
        results.setdefault("section_s", {})[name] = round(time.perf_counter() - started, 1)
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"== {name} done in {time.perf_counter() - started:.1f}s", flush=True)
    print(json.dumps({k: v for k, v in results.items() if k not in ("server_log_tail",)}, indent=1)[:20000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
