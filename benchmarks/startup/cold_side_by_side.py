"""Cold starts of both our servers beside TorchServe's, on one machine in one run (issue 14's target).

    pip install --target /tmp/ts torchserve==0.12.0 torch-model-archiver==0.12.0   # needs Java 17
    python benchmarks/startup/cold_side_by_side.py --ts-path /tmp/ts [--reps 5]

TorchServe: a running frontend (``torchserve --start``), then per repetition the register call
(``POST /models?url=echo&initial_workers=1&synchronous=true``) -> the first predict answer ->
unregister: a 1-worker echo model, TorchServe's default settings. lmjupyter: ``lmjupyter serve``
and a Jupyter server with the extension, both with default settings: deploy (``wait: true``) ->
first answer -> undeploy, 1 rank and 2 ranks. The variants alternate (TorchServe, serve 1 rank,
serve 2 ranks, Jupyter 1 rank, ...), medians in s, after one unmeasured round of each.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

TS_HANDLER = '''
from ts.torch_handler.base_handler import BaseHandler


class Echo(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        return [row.get("body") or row.get("data") for row in data]
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TorchServe:
    def __init__(self, ts_path: str, workdir: str):
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([ts_path, os.environ.get("PYTHONPATH", "")]),
                    "PATH": os.pathsep.join([os.path.join(ts_path, "bin"), os.environ["PATH"]])}
        self.store = os.path.join(workdir, "ts-store")
        os.makedirs(self.store, exist_ok=True)
        handler = os.path.join(workdir, "ts_echo.py")
        with open(handler, "w") as f:
            f.write(TS_HANDLER)
        subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", "echo",
                        "--version", "1", "--handler", handler, "--export-path", self.store,
                        "--archive-format", "no-archive", "--force"], check=True, env=self.env)
        self.inference, self.management, metrics = free_port(), free_port(), free_port()
        config = os.path.join(workdir, "config.properties")
        with open(config, "w") as f:
            f.write(f"inference_address=http://127.0.0.1:{self.inference}\n"
                    f"management_address=http://127.0.0.1:{self.management}\n"
                    f"metrics_address=http://127.0.0.1:{metrics}\n"
                    "disable_token_authorization=true\nenable_model_api=true\n"
                    f"model_store={self.store}\n")
        self.log = open(os.path.join(workdir, "torchserve.log"), "wb")
        subprocess.run([sys.executable, "-m", "ts.model_server", "--start", "--ncs", "--ts-config", config,
                        "--model-store", self.store, "--disable-token-auth"],
                       check=True, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.inference}/ping", timeout=10).ok:
                    return
            except requests.RequestException:  # not listening yet, or still starting
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("TorchServe did not answer /ping")

    def cold_start(self) -> float:
        started = time.perf_counter()
        registered = requests.post(f"http://127.0.0.1:{self.management}/models",
                                   params={"url": "echo", "initial_workers": 1, "synchronous": "true"}, timeout=300)
        registered.raise_for_status()
        answer = requests.post(f"http://127.0.0.1:{self.inference}/predictions/echo", json={"x": 1}, timeout=60)
        answer.raise_for_status()
        elapsed = time.perf_counter() - started
        requests.delete(f"http://127.0.0.1:{self.management}/models/echo", timeout=60).raise_for_status()
        time.sleep(0.5)  # let the worker process go before the next round
        return elapsed

    def stop(self) -> None:
        subprocess.run([sys.executable, "-m", "ts.model_server", "--stop"], env=self.env,
                       stdout=self.log, stderr=subprocess.STDOUT)
        self.log.close()


class JupyterServer:
    """``jupyter server`` with the lmjupyter extension (enabled on install), token auth, default settings."""

    def __init__(self, workdir: str):
        from engine_timeline import ROOT

        from lmjupyter.client import Client

        port, token = free_port(), "side-by-side"
        self.log = open(os.path.join(workdir, "jupyter.log"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={workdir}", "--allow-root",
             f"--LMServe.allow_roots={ROOT}"], cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = Client(f"http://127.0.0.1:{port}/", token, timeout=300)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                self.client.health()
                break
            except Exception:
                time.sleep(0.2)
        deadline = time.monotonic() + 120
        while self.client.health()["launcher"].get("state") not in ("ready", "failed", None):
            if time.monotonic() > deadline:
                raise RuntimeError("the extension's fork server did not become ready")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def lmjupyter_cold_start(server, nproc: int) -> float:
    from engine_timeline import echo_body

    started = time.perf_counter()
    server.client.deploy("cold", wait=True, **echo_body(nproc))
    server.client.predict("cold", {"x": 1})
    elapsed = time.perf_counter() - started
    server.client.undeploy("cold")
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ts-path", required=True, help="where torchserve and torch-model-archiver are installed")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    from engine_timeline import Server

    with tempfile.TemporaryDirectory() as workdir:
        ts = TorchServe(args.ts_path, workdir)
        ours = Server(workdir)
        jupyter = JupyterServer(workdir)
        try:
            ours.wait_launcher()
            runs = {"TorchServe 0.12.0, register -> first answer": lambda: ts.cold_start(),
                    "lmjupyter serve, deploy -> first answer, 1 rank": lambda: lmjupyter_cold_start(ours, 1),
                    "lmjupyter serve, deploy -> first answer, 2 ranks": lambda: lmjupyter_cold_start(ours, 2),
                    "Jupyter extension, deploy -> first answer, 1 rank": lambda: lmjupyter_cold_start(jupyter, 1),
                    "Jupyter extension, deploy -> first answer, 2 ranks": lambda: lmjupyter_cold_start(jupyter, 2)}
            samples = {label: [] for label in runs}
            for round_ in range(args.reps + 1):
                for label, run in runs.items():
                    value = run()
                    if round_:
                        samples[label].append(round(value, 3))
        finally:
            jupyter.stop()
            ours.stop()
            ts.stop()
    print(json.dumps({label: {"median_s": round(statistics.median(v), 3), "runs": v}
                      for label, v in samples.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
