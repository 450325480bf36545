"""Deploy -> ready -> first answer through a real ``lmjupyter serve``, with the phase breakdown
from the server's start-up events (``GET .../events``: times as the server received them).

Used by ``breakdown.py`` (CPU) and ``benchmarks/gpu/startup_bench.py`` (GPU).
"""
from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ECHO = os.path.join(ROOT, "benchmarks", "handlers", "echo.py")
TOKEN = "startup-bench"


class Server:
    """``lmjupyter serve`` on a free port with ``extra`` arguments, as a user starts it."""

    def __init__(self, workdir: str, *extra: str, env: dict[str, str] | None = None):
        from lmjupyter.client import Client

        self.log_path = os.path.join(workdir, f"server-{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmjupyter.cli", "serve", "--port", "0", "--token", TOKEN,
             "--allow-root", ROOT, *extra], cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            match = re.search(r"serving at (http://\S+)", open(self.log_path, errors="replace").read())
            if match:
                self.client = Client(match.group(1), TOKEN, timeout=600)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("server did not start:\n" + open(self.log_path, errors="replace").read())

    def wait_launcher(self, timeout: float = 120) -> dict:
        """Until the fork server (if any) has imported what it preloads: a user's first deploy
        usually comes seconds after the server started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            launcher = self.client.health()["launcher"]
            if launcher.get("state") in (None, "ready", "failed"):
                return launcher
            time.sleep(0.1)
        raise RuntimeError("the fork server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def phases_of(events: list[dict]) -> dict[str, float]:
    """When each phase was first reached (s after the worker's start), slowest rank; plus the
    moment every rank had connected ("ranks started") and the group's "ready"."""
    out: dict[str, float] = {}
    for event in events:
        if event["rank"] is None:
            if event["phase"] == "starting ranks" and event["done"] == event["total"]:
                out["ranks started"] = event["t"]
            elif event["phase"] == "ready":
                out["ready"] = event["t"]
            continue
        key = f"rank: {event['phase']}"
        first_of_rank = (event["rank"], event["phase"])
        if first_of_rank not in out.setdefault("_seen", set()):
            out["_seen"].add(first_of_rank)
            out[key] = max(out.get(key, 0.0), event["t"])
    out.pop("_seen", None)
    return out


def deploy_once(server: Server, name: str, body: dict, request) -> dict:
    """One cold deploy of ``body`` and its first answer; undeployed again."""
    started = time.perf_counter()
    server.client.deploy(name, wait=True, **body)
    ready = time.perf_counter() - started
    server.client.predict(name, request)
    first = time.perf_counter() - started
    events = server.client.events(name)["events"]
    server.client.undeploy(name)
    return {"deploy call -> ready": ready, "deploy call -> first answer": first, **phases_of(events)}


def median_runs(server: Server, name: str, body: dict, request, reps: int) -> dict:
    deploy_once(server, name, body, request)  # page cache, .pyc files, the pool learning the shape
    runs = [deploy_once(server, name, body, request) for _ in range(reps)]
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}


def echo_body(nproc: int) -> dict:
    config = {"deviceType": "cpu", "torchrun": {"nproc-per-node": nproc}}
    if nproc > 1:
        config["parallelType"] = "tp"
    return {"handler": ECHO, "config": config}


def bench_engine(reps: int, variants=None, cases=None) -> dict:
    """Each (server variant, case) on a fresh server: medians of ``reps`` after one warm-up."""
    variants = variants or {"fork server (default)": [], "--no-fork-server": ["--no-fork-server"]}
    cases = cases or {"echo 1 rank": (echo_body(1), {"x": 1}), "echo 2 ranks (gloo)": (echo_body(2), {"x": 1})}
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for variant, args in variants.items():
            for case, (body, request) in cases.items():
                server = Server(workdir, *args)
                try:
                    server.wait_launcher()
                    results[f"{case}, {variant}"] = median_runs(server, "bench", body, request, reps)
                finally:
                    server.stop()
    return results
