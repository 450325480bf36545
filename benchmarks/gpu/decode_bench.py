"""GPU decode speed of the built-in causal-LM handler: bare loops, the handler in-process, and
through a real ``lmjupyter serve`` (deviceType gpu, nproc 1, one worker).

    python benchmarks/gpu/decode_bench.py --out results.json            # everything
    python benchmarks/gpu/decode_bench.py --skip-server --new 64        # bare paths only

The model is the tiny-Llama builder's at 8 layers x 1024 hidden (8 heads, 2 kv heads,
intermediate 2048, byte-level BPE vocab of 320), bf16 on ``cuda:0``; its
generation_config's eos is set to an id the model cannot emit, so every request
runs its full budget. Every request is 16 prompt tokens.

For each path and batch size B (1 and 16) the time T(n) of a whole request of n new
tokens is the median of ``--reps`` runs after a warm-up; "ms/step" is
(T(new) - T(1)) / (new - 1), the decode step without the prefill, and "tok/s" is
B * new / T(new). Paths:

- ``hf_generate``: ``model.generate`` (dynamic cache, eager), greedy.
- ``eager_loop``: a bare loop of ``model(...)`` + argmax on a DynamicCache, no host sync.
- ``graph_replay``: the captured decode step of the handler's runner replayed alone
  (no Python per step): the floor of the CUDA-graph path.
- ``handler_eager`` / ``handler_graphs``: the built-in handler's ``handle`` in this process
  (``handler.cuda_graphs`` false / default), tokenization and per-step text included; run
  as ``timing_handler.TimedCausalLM`` (the same handler plus two clocks per step).
- ``handler_graphs+encode``: the same, with a per-step partial sender that encodes like the
  worker does (JSON per request, pickled frame), minus the socket.
- ``server``: POST predict to ``lmjupyter serve``. B=1: one request at a time. B=16: a
  blocker request occupies the worker, the 16 requests arrive meanwhile and are taken as
  one batch (checked through /metrics); T is the last of the 16 answers minus the
  blocker's answer. ``server_burst16``: 16 requests sent at once to an idle worker.
  The server runs ``timing_handler.TimedCausalLM``, so ``server_worker_split`` tells the time
  per step inside the handler and in the worker between steps (sending partials).

Results and their reading: ``benchmarks/gpu/RESULTS-gpu.md``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PROMPT_LEN = 16
TOKEN = "gpu-bench"


def build_model(root: Path, layers: int, hidden: int, heads: int, kv_heads: int) -> Path:
    from lmjupyter.models.tiny import build_tiny_llama

    path = build_tiny_llama(root / "llama-bench", num_layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads)
    gen_path = path / "generation_config.json"
    gen = json.loads(gen_path.read_text())
    cfg = json.loads((path / "config.json").read_text())
    gen["eos_token_id"] = cfg["vocab_size"] + 7   # never emitted: every request runs its budget
    gen_path.write_text(json.dumps(gen))
    return path


def prompts(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(PROMPT_LEN)] for _ in range(batch)]


DEVICE = "cuda:0"


def sync() -> None:
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, reps: int) -> float:
    fn()                         # warm-up (captures graphs, fills caches)
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def summarize(t_new: float, t_one: float, batch: int, new: int) -> dict:
    return {"T_new_s": t_new, "T_1_s": t_one, "ms_per_step": (t_new - t_one) / (new - 1) * 1e3,
            "tok_per_s": batch * new / t_new}


# ---- bare paths --------------------------------------------------------------------------
def bench_bare(model_dir: Path, batches, new: int, reps: int, results: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from lmjupyter.handlers.parallel.families import cache_kwarg
    from lmjupyter.worker.context import Context

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(DEVICE).eval()
    vocab = model.config.vocab_size
    kw = cache_kwarg(model)

    for batch in batches:
        ids = torch.tensor(prompts(batch, vocab), device=DEVICE)

        def hf(n):
            return lambda: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                          min_new_tokens=n, do_sample=False)

        def loop(n):
            @torch.no_grad()
            def run():
                cache = {kw: DynamicCache(config=model.config)}
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache)
                tok = out.logits[:, -1].argmax(-1, keepdim=True)
                for _ in range(n - 1):
                    out = model(input_ids=tok, use_cache=True, logits_to_keep=1, **cache)
                    tok = out.logits[:, -1].argmax(-1, keepdim=True)
                return tok
            return run

        results[f"hf_generate b{batch}"] = summarize(timed(hf(new), reps), timed(hf(1), reps), batch, new)
        results[f"eager_loop b{batch}"] = summarize(timed(loop(new), reps), timed(loop(1), reps), batch, new)
        print(json.dumps({k: v for k, v in results.items() if k.endswith(f"b{batch}")}), flush=True)
    del model
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()

    cuda = DEVICE.startswith("cuda")
    fast = {} if cuda else {"static_cache": True}   # on CPU (a dry run of this script): the static path, no graphs
    sys.path.insert(0, str(Path(__file__).parent))
    from timing_handler import TimedCausalLM

    from lmjupyter.worker.codec import encode_answer

    def worker_like_send(partials):   # what the worker does per step (lmjupyter/worker/main.py), minus the socket
        import pickle

        pickle.dumps(("partial", 0, [(i, encode_answer(p)) for i, p in enumerate(partials) if p is not None]))

    for label, hcfg in (("handler_eager", {"cuda_graphs": False}), ("handler_graphs", fast)):
        ctx = Context(model_name="bench", model_dir=str(model_dir),
                      model_yaml_config={"deviceType": "gpu" if cuda else "cpu", "handler": hcfg}, device=DEVICE)
        handler = TimedCausalLM()
        handler.initialize(ctx)
        for batch in batches:
            if label == "handler_graphs":
                ctx._send_intermediate = worker_like_send
                reqs = [{"input_ids": p, "max_new_tokens": new} for p in prompts(batch, vocab)]
                t_new = timed(lambda: handler.handle(reqs, ctx), reps)
                rec = handler.handle(reqs, ctx)[0]["timing"]
                results[f"handler_graphs+encode b{batch}"] = {
                    "T_new_s": t_new, "tok_per_s": batch * new / t_new,
                    "inside_ms_per_step": rec["inside_s"] / rec["steps"] * 1e3,
                    "outside_ms_per_step": rec["outside_s"] / max(1, rec["steps"] - 1) * 1e3}
                ctx._send_intermediate = None
            reqs = [{"input_ids": p, "max_new_tokens": new} for p in prompts(batch, vocab)]
            one = [{"input_ids": p, "max_new_tokens": 1} for p in prompts(batch, vocab)]
            outs = []
            t_new = timed(lambda: outs.append(handler.handle(reqs, ctx)), reps)
            t_one = timed(lambda: handler.handle(one, ctx), reps)
            assert all(len(a["token_ids"]) == new for a in outs[-1])
            results[f"{label} b{batch}"] = summarize(t_new, t_one, batch, new)
            rec = outs[-1][0]["timing"]
            results[f"{label} b{batch}"]["inside_ms_per_step"] = rec["inside_s"] / rec["steps"] * 1e3
            print(label, batch, json.dumps(results[f"{label} b{batch}"]), flush=True)
        if label == "handler_graphs":
            runner = handler.runner
            results["runner"] = type(runner).__name__
            for (b, length), shape in runner.shapes.items():
                if getattr(shape, "graph", None) is None or b not in batches:
                    continue
                steps = min(200, length - PROMPT_LEN - 2)
                for counter in shape._counters():   # decode from just after a 16-token prompt
                    counter.fill_(PROMPT_LEN)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(steps):
                    shape.graph.replay()
                torch.cuda.synchronize()
                results[f"graph_replay b{b}"] = {"ms_per_step": (time.perf_counter() - t0) / steps * 1e3,
                                                 "cache_len": length, "steps": steps}
        del handler
        if cuda:
            torch.cuda.empty_cache()


# ---- through the server --------------------------------------------------------------------
class Server:
    def __init__(self, root: Path):
        self.log_path = root / "server.log"
        self.log = open(self.log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LMJUPYTER_TOKEN": TOKEN}
        self.proc = subprocess.Popen([sys.executable, "-m", "lmjupyter.cli", "serve", "--port", "0", "--token", TOKEN,
                                      "--model-store", str(root / "store")],
                                     cwd=root, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            match = re.search(r"serving at (http://\S+)", text)
            if match:
                self.url = match.group(1)
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{text}")
            time.sleep(0.05)
        else:
            raise RuntimeError("server did not start:\n" + self.log_path.read_text(errors="replace"))
        from lmjupyter.client import Client

        self.client = Client(self.url, TOKEN, timeout=300)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def batch_sizes(client, name: str) -> tuple[float, float]:
    text = client.metrics()
    found = {m: float(v) for m, v in re.findall(
        r'^lmjupyter_batch_size_(sum|count)\{[^}]*model="%s"[^}]*\} (\S+)$' % re.escape(name), text, re.M)}
    return found.get("sum", 0.0), found.get("count", 0.0)


def bench_server(model_dir: Path, root: Path, batches, new: int, reps: int, results: dict) -> None:
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    server = Server(root)
    try:
        client = server.client
        config = {"deviceType": "gpu" if DEVICE.startswith("cuda") else "cpu", "minWorkers": 1, "maxWorkers": 1, "batchSize": max(batches),
                  "responseTimeout": 300, "torchrun": {"nproc-per-node": 1}}
        t0 = time.perf_counter()
        handler_file = root / "timing_handler.py"
        handler_file.write_text((Path(__file__).with_name("timing_handler.py")).read_text())
        described = client.deploy("bench", handler=str(handler_file), model_dir=str(model_dir), config=config,
                                  wait=True)
        results["server_deploy_s"] = time.perf_counter() - t0
        results["server_worker_devices"] = [w.get("devices") for w in described.get("workers", [])]
        assert described["state"] == "ready", server.log_path.read_text()

        timings: dict = {}

        def one_request(n):
            req = {"input_ids": prompts(1, vocab)[0], "max_new_tokens": n}

            def run():
                answer = client.predict("bench", req)
                timings.setdefault(("b1", n), []).append(answer["timing"])
            return run

        pool = concurrent.futures.ThreadPoolExecutor(max(batches) + 1)

        def batch_round(batch, n):
            """Blocker first; the batch arrives while it runs; T = last answer - blocker's answer."""
            reqs = [{"input_ids": p, "max_new_tokens": n} for p in prompts(batch, vocab)]
            blocker = pool.submit(client.predict, "bench", {"input_ids": prompts(1, vocab, seed=9)[0],
                                                            "max_new_tokens": 48})
            time.sleep(0.01)
            before = batch_sizes(client, "bench")
            done_at = {}

            def send(i):
                answer = client.predict("bench", reqs[i])
                done_at[i] = time.perf_counter()
                return answer

            futures = [pool.submit(send, i) for i in range(batch)]
            blocker.result()
            t_block = time.perf_counter()
            answers = [f.result() for f in futures]
            assert all(len(a["token_ids"]) == n for a in answers)
            timings.setdefault((f"b{batch}", n), []).append(answers[0]["timing"])
            after = batch_sizes(client, "bench")
            return max(done_at.values()) - t_block, (after[0] - before[0], after[1] - before[1] - 0)

        for batch in batches:
            if batch == 1:
                t_new = timed_host(one_request(new), reps)
                t_one = timed_host(one_request(1), reps)
                results["server b1"] = summarize(t_new, t_one, 1, new)
            else:
                rounds_new = [batch_round(batch, new) for _ in range(reps + 1)][1:]
                rounds_one = [batch_round(batch, 1) for _ in range(reps + 1)][1:]
                t_new = statistics.median(r[0] for r in rounds_new)
                t_one = statistics.median(r[0] for r in rounds_one)
                results[f"server b{batch}"] = summarize(t_new, t_one, batch, new)
                # (requests, batches) that the rounds' metrics saw, blocker batch included
                results[f"server b{batch}"]["batches_seen"] = [r[1] for r in rounds_new]
            print("server", batch, json.dumps(results[f"server b{batch}"]), flush=True)

        for (label, n), recs in timings.items():
            if n == new:
                rec = recs[-1]
                results[f"server_worker_split {label}"] = {
                    "steps": rec["steps"], "inside_ms_per_step": rec["inside_s"] / rec["steps"] * 1e3,
                    "outside_ms_per_step": rec["outside_s"] / max(1, rec["steps"] - 1) * 1e3}
        # 16 requests at once to an idle worker: the engine sends the first alone (idle worker)
        if max(batches) > 1:
            batch = max(batches)
            reqs = [{"input_ids": p, "max_new_tokens": new} for p in prompts(batch, vocab)]
            walls = []
            for _ in range(reps):
                before = batch_sizes(client, "bench")
                t0 = time.perf_counter()
                list(pool.map(lambda r: client.predict("bench", r), reqs))
                walls.append(time.perf_counter() - t0)
                after = batch_sizes(client, "bench")
            results[f"server_burst{batch}"] = {"T_new_s": statistics.median(walls),
                                               "tok_per_s": batch * new / statistics.median(walls),
                                               "requests_batches_last": [after[0] - before[0], after[1] - before[1]]}
            print("burst", json.dumps(results[f"server_burst{batch}"]), flush=True)
        # the rank's own view of its GPU (logs)
        try:
            results["server_rank_log_tail"] = client.logs("bench", tail=5)
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            results["server_rank_log_tail"] = repr(exc)
        client.undeploy("bench")
        pool.shutdown(wait=False)
    finally:
        server.stop()
        results["server_log_tail"] = server.log_path.read_text(errors="replace")[-3000:]


def timed_host(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def environment() -> dict:
    import torch
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        env["nvidia_smi"] = f"unavailable: {exc}"
    return env


def table(results: dict, batches, new: int) -> str:
    lines = [f"| path | batch | ms/step | tok/s (T for {new} new tokens) |", "| --- | --- | --- | --- |"]
    for path in ("hf_generate", "eager_loop", "graph_replay", "handler_eager", "handler_graphs", "handler_graphs+encode",
                 "server"):
        for b in batches:
            r = results.get(f"{path} b{b}")
            if r:
                tps = f"{r['tok_per_s']:.0f} ({r['T_new_s'] * 1e3:.1f} ms)" if "tok_per_s" in r else "-"
                step = f"{r['ms_per_step']:.3f}" if "ms_per_step" in r else "-"
                lines.append(f"| {path} | {b} | {step} | {tps} |")
    burst = [k for k in results if k.startswith("server_burst")]
    for k in burst:
        r = results[k]
        lines.append(f"| {k} (idle worker, 16 at once) | {k[12:]} | - | {r['tok_per_s']:.0f} ({r['T_new_s'] * 1e3:.1f} ms) |")
    for key in sorted(k for k in results if isinstance(results[k], dict) and "inside_ms_per_step" in results[k]):
        r = results[key]
        lines.append(f"<!-- {key}: inside {r['inside_ms_per_step']:.3f} ms/step"
                     + (f", outside {r['outside_ms_per_step']:.3f} ms/step" if "outside_ms_per_step" in r else "") + " -->")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--skip-bare", action="store_true")
    parser.add_argument("--device", default="cuda:0", help="cpu: a dry run of the script's paths")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    batches = [int(b) for b in args.batches.split(",")]
    results: dict = {"env": environment(), "argv": sys.argv, "new_tokens": args.new, "prompt_len": PROMPT_LEN,
                     "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads,
                               "kv_heads": args.kv_heads, "dtype": "bfloat16"}}
    root = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    model_dir = build_model(root, args.layers, args.hidden, args.heads, args.kv_heads)
    try:
        if not args.skip_bare:
            bench_bare(model_dir, batches, args.new, args.reps, results)
        if not args.skip_server:
            bench_server(model_dir, root, batches, args.new, args.reps, results)
    finally:
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(table(results, batches, args.new))
    for b in batches:
        bare, served = results.get(f"handler_graphs b{b}"), results.get(f"server b{b}")
        if bare and served:
            print(f"b{b}: server/bare tok/s = {served['tok_per_s'] / bare['tok_per_s']:.3f}, "
                  f"ms/step ratio = {served['ms_per_step'] / bare['ms_per_step']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
