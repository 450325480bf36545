"""Serving-overhead, batching, cold-start and memory benchmarks of ``lmjupyter serve`` (CPU).

    python benchmarks/run.py            # full: 10 s per wrk run, 3 repetitions (about 8 minutes)
    python benchmarks/run.py --quick    # 3 s per run, 2 repetitions (about 2 minutes)
    python benchmarks/run.py --only echo,cold --reps 2 --duration 5
    python benchmarks/run.py --only echo,gpt2 --jupyter   # the Jupyter extension beside, point by point
                                                          # (as `lmjupyter lab` runs it; --jupyter-loop asyncio: stock)

Every scenario runs against a real ``lmjupyter serve`` subprocess on loopback, one worker
group per model. Throughput and latency come from ``wrk`` (one thread, ``benchmarks/post.lua``
POSTs a JSON body with the token); each number is the median of the repetitions, and the
repetitions of all throughput scenarios are interleaved (A B C ... A B C ...) so that slow
drift of the machine hits every variant alike. Cold start is the wall time from the deploy
call to the first answer. Results go to ``benchmarks/results/<time>.json`` (and ``latest.json``)
and a markdown table is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "post.lua")
ECHO = os.path.join(HERE, "handlers", "echo.py")
GPT2 = os.path.join(HERE, "handlers", "tiny_gpt2.py")
TOKEN = "bench-token"
BODY = '{"x": 1}'
MAX_FOREIGN_CPU = 0.10  # cores used by other processes during a run before it is redone
MAX_ATTEMPTS = 4

# TorchServe 0.12.0 / LitServe, measured on this machine kind (2 cores, wrk, one worker).
TARGETS = {
    "echo b1 c1": {"rps": 1369, "p50_ms": 0.68},
    "echo b1 c8": {"rps": 1557, "p50_ms": 4.9},
    "echo b8 c1": {"p50_ms_max": 1.5},
    "echo b8 c8": {"rps": 4847, "p50_ms": 1.5},
    "gpt2 b1 c8": {"rps": 491},
    "cold 1x1": {"s_max": 0.6, "note": "0.5 x TorchServe's 1.2-2.1 s"},
}


# ---- the server ---------------------------------------------------------------------------
class Server:
    """``lmjupyter serve`` in a subprocess, with a scratch working directory."""

    def __init__(self, workdir: str, *extra: str, package_root: str | None = None):
        """``package_root``: a folder holding another ``lmjupyter`` package to run instead (ab.py)."""
        self.log_path = os.path.join(workdir, f"server-{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "lmjupyter.cli", "serve", "--port", "0", "--token", TOKEN,
               "--allow-root", HERE, "--allow-root", workdir, *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if package_root:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(cmd, cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.url = self._wait_for_url()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {TOKEN}"

    def _wait_for_url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = open(self.log_path, encoding="utf-8", errors="replace").read()
            match = re.search(r"serving at (http://\S+)", text)
            if match:
                loop = re.search(r"event loop: (\w+)", text)
                self.loop = loop.group(1) if loop else "asyncio"  # servers before --loop ran asyncio's
                return match.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.02)
        raise RuntimeError("server did not start:\n" + open(self.log_path).read())

    def call(self, method: str, path: str, **kwargs):
        response = self.session.request(method, self.url + "lmserve/api/" + path, timeout=600, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code}: {response.text[:2000]}")
        return response.json()

    def deploy(self, name: str, handler: str, config: dict, **extra) -> dict:
        return self.call("POST", "models", json={"name": name, "handler": handler, "config": config,
                                                  "wait": True, **extra})

    def undeploy(self, name: str) -> None:
        pids = [r["pid"] for w in self.call("GET", f"models/{name}")["workers"] for r in w["ranks"]]
        self.call("DELETE", f"models/{name}")
        wait_gone(pids)

    def predict(self, name: str, body: str = BODY):
        response = self.session.post(self.url + f"lmserve/api/models/{name}/predict", data=body,
                                     headers={"Content-Type": "application/json"}, timeout=600)
        if response.status_code != 200:
            raise RuntimeError(f"predict {name}: HTTP {response.status_code}: {response.text[:2000]}")
        return response.json()

    def predict_url(self, name: str) -> str:
        return self.url + f"lmserve/api/models/{name}/predict"

    def health(self) -> dict:
        return self.call("GET", "health")

    def wait_spares_ready(self, timeout: float = 60) -> None:
        """With ``--warm-spares``: wait until every spare has imported torch (idle CPU again)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pool = self.health().get("warm_spares")
            if pool is None or (pool["spares"] and all(s["state"] == "ready" for s in pool["spares"])):
                return
            time.sleep(0.05)
        raise RuntimeError(f"warm spares not ready after {timeout}s: {self.health()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in pids if _exists(p)):
            return
        time.sleep(0.02)


def _exists(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_idle_cpu(seconds: float = 0.5, timeout: float = 20) -> None:
    """Let background work (spare start-up, a previous run's tail) finish before a measurement."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if psutil.cpu_percent(interval=seconds) < 20:
            return


# ---- wrk ------------------------------------------------------------------------------------
def run_wrk(url: str, connections: int, duration: float, body: str = BODY, server: "Server | None" = None) -> dict:
    """One wrk run, with the CPU each side used per request (server, ranks with their torchrun
    agents, wrk) and ``foreign_cpu``: the cores that other processes used meanwhile (this
    machine is shared; a run disturbed by others is redone)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "-s", LUA, url]
    env = {**os.environ, "LMJ_TOKEN": TOKEN, "LMJ_BODY": body}
    before, busy_before, started = cpu_split(server), busy_cpu(), time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    elapsed = time.monotonic() - started
    after, busy_after = cpu_split(server), busy_cpu()
    match = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    data = json.loads(match.group(1))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    used = {role: after[role] - before.get(role, 0.0) for role in after}
    data["foreign_cpu"] = max(0.0, ((busy_after - busy_before) - sum(used.values())) / elapsed)
    for role in ("server", "ranks", "wrk"):
        data[f"{role}_us"] = used.get(role, 0.0) / max(1, data["requests"]) * 1e6
    return data


def busy_cpu() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0) - getattr(t, "guest", 0) - getattr(t, "guest_nice", 0)


def cpu_split(server: "Server | None") -> dict:
    """CPU seconds so far: the server process, its descendants (torchrun agents and ranks), wrk
    (this process's reaped children) and this harness itself."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    split = {"wrk": children.ru_utime + children.ru_stime, "harness": me.ru_utime + me.ru_stime,
             "server": 0.0, "ranks": 0.0}
    if server is not None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(server.proc.pid)
            t = root.cpu_times()
            split["server"] = t.user + t.system
            for proc in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    split["ranks"] += t.user + t.system
    return split


def model_counters(server: Server, name: str) -> tuple[int, int]:
    metrics = server.call("GET", f"models/{name}")["metrics"]
    return metrics["requests_total"], metrics["batches_total"]


def throughput(server: Server, scenarios: list[tuple], duration: float, reps: int) -> dict:
    """Run every (label, model, concurrency[, server]) ``reps`` times, interleaved; medians per label."""
    scenarios = [(*s, server) if len(s) == 3 else s for s in scenarios]
    runs: dict[str, list[dict]] = {s[0]: [] for s in scenarios}
    for label, model, connections, server in scenarios:  # warm-up: connections, caches, allocator
        run_wrk(server.predict_url(model), connections, 1)
    for rep in range(reps):
        for label, model, connections, server in scenarios:
            for attempt in range(MAX_ATTEMPTS):
                wait_idle_cpu()
                requests_before, batches_before = model_counters(server, model)
                data = run_wrk(server.predict_url(model), connections, duration, server=server)
                if data["foreign_cpu"] <= MAX_FOREIGN_CPU:
                    break
                print(f"  ({label}: other processes used {data['foreign_cpu']:.2f} cores meanwhile; again)", flush=True)
            data["attempts"] = attempt + 1
            requests_after, batches_after = model_counters(server, model)
            batches = batches_after - batches_before
            data["mean_batch"] = (requests_after - requests_before) / batches if batches else 0
            runs[label].append(data)
            print(f"  rep {rep + 1}/{reps} {label:<12} {data['rps']:6.0f} req/s  p50 {data['p50_us'] / 1000:6.2f} ms  "
                  f"p99 {data['p99_us'] / 1000:6.2f} ms  batch {data['mean_batch']:.2f}  CPU us/req: server "
                  f"{data['server_us']:.0f} ranks {data['ranks_us']:.0f} wrk {data['wrk_us']:.0f}  "
                  f"others {data['foreign_cpu']:.2f} cores  errors {data['errors']}", flush=True)
    return {label: summarize(items) for label, items in runs.items()}


def summarize(items: list[dict]) -> dict:
    return {"rps": statistics.median(i["rps"] for i in items),
            "p50_ms": statistics.median(i["p50_us"] for i in items) / 1000,
            "p99_ms": statistics.median(i["p99_us"] for i in items) / 1000,
            "mean_batch": statistics.median(i["mean_batch"] for i in items),
            "errors": sum(i["errors"] for i in items),
            "foreign_cpu": statistics.median(i["foreign_cpu"] for i in items),
            "server_us": statistics.median(i["server_us"] for i in items),
            "ranks_us": statistics.median(i["ranks_us"] for i in items),
            "wrk_us": statistics.median(i["wrk_us"] for i in items),
            "runs": items}


# ---- scenarios ------------------------------------------------------------------------------
def echo_config(batch: int) -> dict:
    return {"deviceType": "cpu", "minWorkers": 1, "maxWorkers": 1, "batchSize": batch, "maxBatchDelay": 5}


def bench_echo(server: Server, duration: float, reps: int, jupyter: Server | None = None) -> dict:
    servers = [server] + ([jupyter] if jupyter else [])
    for s in servers:
        s.deploy("echo-b1", ECHO, echo_config(1))
        s.deploy("echo-b8", ECHO, echo_config(8))
    wait_idle_cpu()
    scenarios = [(f"echo b{b} c{c}", f"echo-b{b}", c) for c in (1, 8, 32) for b in (1, 8)]
    results = throughput(server, beside(scenarios, jupyter), duration, reps)
    results["_rss"] = memory(server, ["echo-b1"])
    for s in servers:
        s.undeploy("echo-b1")
        s.undeploy("echo-b8")
    return results


def beside(scenarios: list[tuple], jupyter: Server | None) -> list[tuple]:
    """Each scenario, then (with ``--jupyter``) the same against the Jupyter server: ``<label> jupyter``."""
    if jupyter is None:
        return scenarios
    return [s for scenario in scenarios for s in (scenario, (f"{scenario[0]} jupyter", *scenario[1:], jupyter))]


# The tiny GPT-2: 2 layers, 64 hidden (2 heads); a 1000-token vocabulary keeps the LM head as
# small as the rest. The handler runs one forward pass over 16 fixed token ids per request.
GPT2_CONFIG = dict(n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=1000, bos_token_id=0, eos_token_id=0)


def build_tiny_gpt2(path: str) -> str:
    if not os.path.isfile(os.path.join(path, "config.json")):
        from transformers import GPT2Config, GPT2LMHeadModel
        import torch

        torch.manual_seed(0)
        config = GPT2Config(**GPT2_CONFIG)
        GPT2LMHeadModel(config).save_pretrained(path)
    return path


def bench_gpt2(server: Server, model_dir: str, duration: float, reps: int, jupyter: Server | None = None) -> dict:
    servers = [server] + ([jupyter] if jupyter else [])
    for s in servers:
        for batch in (1, 8):
            s.call("POST", "models", json={"name": f"gpt2-b{batch}", "handler": GPT2, "model_dir": model_dir,
                                           "config": echo_config(batch), "wait": True})
    wait_idle_cpu()
    scenarios = [(f"gpt2 b{b} c8", f"gpt2-b{b}", 8) for b in (1, 8)]
    results = throughput(server, beside(scenarios, jupyter), duration, reps)
    results["_rss"] = memory(server, ["gpt2-b1"])
    for s in servers:
        s.undeploy("gpt2-b1")
        s.undeploy("gpt2-b8")
    return results


def cold_starts(server: Server, label: str, config: dict, reps: int, spares: bool) -> dict:
    """Deploy call -> first answer, then undeploy; ``reps`` times (after one unmeasured round)."""
    times, ready = [], []
    for rep in range(reps + 1):
        if spares:
            server.wait_spares_ready()
        wait_idle_cpu()
        started = time.perf_counter()
        server.deploy("cold", ECHO, config)
        deployed = time.perf_counter()
        server.predict("cold")
        answered = time.perf_counter()
        if rep == reps:
            if spares:
                server.wait_spares_ready()
            mem = memory(server, ["cold"])
        server.undeploy("cold")
        if rep:  # the first round warms the page cache (and teaches the spare pool this shape)
            times.append(answered - started)
            ready.append(deployed - started)
        print(f"  {label:<22} {'warm-up' if not rep else f'rep {rep}/{reps}'}: deploy {deployed - started:.3f} s, "
              f"first answer {answered - started:.3f} s", flush=True)
    return {"s": statistics.median(times), "deploy_s": statistics.median(ready), "runs": times, "memory": mem}


COLD_SHAPES = [
    ("cold 1x1", echo_config(1)),
    ("cold 1x2", {**echo_config(1), "parallelType": "tp", "torchrun": {"nproc-per-node": 2}}),
    ("cold 4 workers x1", {**echo_config(1), "minWorkers": 4, "maxWorkers": 4}),
]


def bench_cold(workdir: str, reps: int, spares: bool) -> dict:
    """Each shape on a fresh server: without spares, then (``spares``) with ``--warm-spares N``,
    N = the workers one deploy starts (1, 1, 4)."""
    results = {}
    variants = [(label, config, []) for label, config in COLD_SHAPES]
    if spares:
        variants += [(f"{label} --warm-spares {config['minWorkers']}", config,
                      ["--warm-spares", str(config["minWorkers"])]) for label, config in COLD_SHAPES]
    for label, config, args in variants:
        server = Server(workdir, *args)
        try:
            results[label] = cold_starts(server, label, config, reps, bool(args))
        finally:
            server.stop()
    return results


def memory(server: Server, models: list[str]) -> dict:
    """RSS and USS (memory only this process holds) of the server, torchrun agents and ranks."""
    def mem(pid: int) -> dict:
        info = psutil.Process(pid).memory_full_info()
        return {"rss_mb": info.rss / 2**20, "uss_mb": info.uss / 2**20}

    out = {"server": mem(server.proc.pid)}
    for name in models:
        for worker in server.call("GET", f"models/{name}")["workers"]:
            for rank in worker["ranks"]:
                out[f"{name} w{worker['id']} rank {rank['rank']}"] = mem(rank["pid"])
                agent = psutil.Process(rank["pid"]).parent()
                out[f"{name} w{worker['id']} torchrun agent"] = mem(agent.pid)
    for number, spare in enumerate((server.health().get("warm_spares") or {}).get("spares", []), 1):
        for rank, pid in enumerate(spare["pids"]):
            out[f"spare {number} rank {rank}"] = mem(pid)
        out[f"spare {number} torchrun agent"] = mem(spare["torchrun_pid"])
    return out


# ---- report ---------------------------------------------------------------------------------
def versions() -> dict:
    import tornado
    import torch
    import transformers

    import lmjupyter

    def cmd(*args):
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    wrk = cmd("wrk", "-v").splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cmd("lscpu").splitlines()
                  if line.startswith("Model name")), platform.processor())
    try:
        import uvloop
        uvloop_version = uvloop.__version__
    except ImportError:
        uvloop_version = "not installed"
    return {"load_generator": (wrk[0] if wrk else "wrk ?") + ", 1 thread, benchmarks/post.lua",
            "uvloop": uvloop_version, "lmjupyter": lmjupyter.__version__,
            "commit": cmd("git", "-C", HERE, "rev-parse", "--short", "HEAD"),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tornado": tornado.version,
            "cpu": f"{model}, {os.cpu_count()} cores", "kernel": platform.release()}


def table(results: dict) -> str:
    lines = ["| scenario | req/s | p50 ms | p99 ms | mean batch | CPU us/req: server / ranks / wrk | target |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for label, r in results.items():
        if label.startswith("_") or "rps" not in r:
            continue
        lines.append(f"| {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_batch']:.2f} | "
                     f"{r['server_us']:.0f} / {r['ranks_us']:.0f} / {r['wrk_us']:.0f} | {target_text(label)} |")
    lines += parity_table(results)
    lines += ["", "| cold start (deploy call -> first answer) | median s | deploy returned s | target |",
              "| --- | ---: | ---: | --- |"]
    for label, r in results.items():
        if label.startswith("cold"):
            lines.append(f"| {label} | {r['s']:.2f} | {r['deploy_s']:.2f} | {target_text(label)} |")
    rss = {k: v for key in ("echo", "gpt2") for k, v in results.get(f"_{key}_rss", {}).items()}
    for label in ("cold 1x1 --warm-spares 1", "cold 1x2"):
        rss.update({f"{k} ({label})": v for k, v in results.get(label, {}).get("memory", {}).items()
                    if k != "server"})
    if rss:
        lines += ["", "| process | RSS MiB | USS MiB |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {v['rss_mb']:.0f} | {v['uss_mb']:.0f} |" for k, v in rss.items()]
    return "\n".join(lines)


def parity_table(results: dict) -> list[str]:
    """``--jupyter``: the Jupyter extension beside lmjupyter serve, point by point (target >= 0.8x)."""
    pairs = [(label, results[f"{label} jupyter"]) for label in results if f"{label} jupyter" in results]
    if not pairs:
        return []
    lines = ["", "| scenario | lmjupyter serve req/s, p50 ms | Jupyter extension req/s, p50 ms | Jupyter / serve |",
             "| --- | --- | --- | ---: |"]
    for label, j in pairs:
        s = results[label]
        lines.append(f"| {label} | {s['rps']:.0f}, {s['p50_ms']:.2f} | {j['rps']:.0f}, {j['p50_ms']:.2f} | "
                     f"{j['rps'] / s['rps']:.2f}x |")
    return lines


def target_text(label: str) -> str:
    target = TARGETS.get(label.split(" --warm-spares")[0])
    if not target:
        return ""
    parts = []
    if "rps" in target:
        parts.append(f"{target['rps']} req/s")
    if "p50_ms" in target:
        parts.append(f"p50 {target['p50_ms']} ms")
    if "p50_ms_max" in target:
        parts.append(f"p50 < {target['p50_ms_max']} ms")
    if "s_max" in target:
        parts.append(f"<= {target['s_max']} s ({target['note']})")
    return ", ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s runs, 2 repetitions")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10, quick 3)")
    parser.add_argument("--reps", type=int, help="repetitions per scenario (default 3, quick 2; at least 2)")
    parser.add_argument("--only", default="echo,gpt2,cold", help="comma-separated subset of echo,gpt2,cold")
    parser.add_argument("--no-spares", dest="warm_spares", action="store_false",
                        help="skip the cold starts with `lmjupyter serve --warm-spares N`")
    parser.add_argument("--jupyter", action="store_true",
                        help="also run echo and gpt2 against a Jupyter server with the extension, interleaved")
    parser.add_argument("--jupyter-loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="uvloop: JupyterLab started as `lmjupyter lab` (the README's way, default); "
                             "asyncio: a stock `jupyter server`")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the JSON results")
    args = parser.parse_args(argv)
    duration = args.duration or (3 if args.quick else 10)
    reps = max(2, args.reps or (2 if args.quick else 3))
    only = set(args.only.split(","))
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2

    info = versions()
    print(json.dumps(info, indent=1), flush=True)
    results: dict = {}
    workdir = tempfile.mkdtemp(prefix="lmj-bench-")
    try:
        if only & {"echo", "gpt2"}:
            server = Server(workdir)
            info["server_event_loop"] = server.loop
            print(f"server event loop: {server.loop}", flush=True)
            jupyter = None
            try:
                if args.jupyter:
                    from jupyter_bench import JupyterServer

                    jupyter = JupyterServer(workdir, loop=args.jupyter_loop)
                    info["jupyter_event_loop"] = jupyter.loop
                if "echo" in only:
                    print("echo handler", flush=True)
                    echo = bench_echo(server, duration, reps, jupyter)
                    results["_echo_rss"] = echo.pop("_rss")
                    results.update(echo)
                if "gpt2" in only:
                    print("tiny GPT-2", flush=True)
                    gpt2 = bench_gpt2(server, build_tiny_gpt2(os.path.join(workdir, "tiny-gpt2")), duration, reps,
                                      jupyter)
                    results["_gpt2_rss"] = gpt2.pop("_rss")
                    results.update(gpt2)
            finally:
                server.stop()
                if jupyter is not None:
                    jupyter.stop()
        if "cold" in only:
            print("cold start", flush=True)
            results.update(bench_cold(workdir, reps, args.warm_spares))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(table(results))
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = {"when": stamp, "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
              "duration_s": duration, "reps": reps, "versions": info, "results": results}
    for name in (f"{stamp}.json", "latest.json"):
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
