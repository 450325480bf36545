"""Soak of ``lmjupyter serve`` (issue 13, part 7): everything at once for a long time, counted.

    python benchmarks/soak.py                 # 10 minutes; figures in docs/RELIABILITY.md
    python benchmarks/soak.py --duration 60   # the CI version (tests/reliability/test_soak.py)

One server, one model ("main": 1-2 workers x 2 gloo ranks, batchSize 4) under
3 predict clients and 1 streaming client checking every answer, while: clients
drop requests mid-way (predicts and streams), "main" is scaled 1 <-> 2 every 20 s,
a second model is deployed and undeployed every 25 s, and a rank of "main" is
killed -9 every 30 s. Every 5 s the server's RSS and open fds, its HTTP requests in
flight (``lmjupyter_http_requests_in_flight``), the ranks' RSS and the number of
processes below the server are sampled. At the end the server is
stopped and nothing may be left. Prints (and with --json writes) the counts of
every outcome and the samples.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
HANDLER = os.path.join(HERE, "handlers", "soak_echo.py")
TOKEN = "soak-token"
MAIN = {"deviceType": "cpu", "minWorkers": 1, "maxWorkers": 2, "batchSize": 4, "responseTimeout": 30,
        "torchrun": {"nproc-per-node": 2}}
SECOND = {"deviceType": "cpu", "minWorkers": 1, "maxWorkers": 1}

sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from serverproc import descendants  # noqa: E402  (every process below the server)


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Soak:
    def __init__(self, workdir: str, duration: float, kill_every: float = 30, scale_every: float = 20,
                 deploy_every: float = 25, sample_every: float = 5, seed: int = 13):
        self.workdir, self.duration = workdir, duration
        self.every = {"kill": kill_every, "scale": scale_every, "deploy": deploy_every, "sample": sample_every}
        self.random = random.Random(seed)
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.samples: list[dict] = []
        self.examples: dict[str, str] = {}  # the first answer of each kind that was not a 200
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.headers = {"Authorization": f"token {TOKEN}"}

    # ---- the server -----------------------------------------------------------------------
    def start_server(self) -> None:
        log = open(os.path.join(self.workdir, "server.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "lmjupyter.cli", "serve", "--port", "0", "--token", TOKEN,
                                      "--allow-root", HERE], cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = re.search(r"serving at (http://\S+)", open(log.name, errors="replace").read())
            if match:
                self.url = match.group(1)
                return
            time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.url + path, headers=self.headers, timeout=kwargs.pop("timeout", 120),
                                **kwargs)

    def count(self, activity: str, outcome: str) -> None:
        with self._lock:
            self.counts[activity][outcome] += 1

    # ---- activities -------------------------------------------------------------------------
    def predictor(self, index: int) -> None:
        session, n = requests.Session(), 0
        session.headers.update(self.headers)
        while not self._stop.is_set():
            n += 1
            payload = {"client": index, "n": n}
            started = time.monotonic()
            try:
                response = session.post(self.url + "lmserve/api/models/main/predict", json=payload, timeout=60)
                outcome = str(response.status_code)
                if response.status_code != 200:
                    self.examples.setdefault(f"predict {outcome}", response.text[:400])
                if response.status_code == 200:
                    if response.json() != payload:
                        outcome = "wrong"
                    else:
                        with self._lock:
                            self.latencies.append(time.monotonic() - started)
            except requests.Timeout:
                outcome = "hung"
            except requests.RequestException as exc:
                outcome = f"error {type(exc).__name__}"
            self.count("predict", outcome)

    def streamer(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            payload = {"stream": n, "parts": 5}
            try:
                with requests.post(self.url + "lmserve/api/models/main/predict?stream=1", json=payload, stream=True,
                                   headers=self.headers, timeout=60) as response:
                    lines = [json.loads(line) for line in response.iter_lines() if line]
                steps = [line["partial"]["step"] for line in lines if "partial" in line]
                last = lines[-1] if lines else {}
                if "result" in last:
                    outcome = "200" if steps == list(range(5)) and last["result"] == payload else "wrong"
                else:
                    outcome = str(last.get("error", {}).get("status", response.status_code))
                    self.examples.setdefault(f"stream {outcome}", json.dumps(last)[:400])
            except requests.Timeout:
                outcome = "hung"
            except requests.RequestException as exc:
                outcome = f"error {type(exc).__name__}"
            self.count("stream", outcome)

    def disconnector(self) -> None:
        host, port = self.url.split("//")[1].rstrip("/").split(":")
        while not self._stop.is_set():
            stream = self.random.random() < 0.5
            body = json.dumps({"parts": 5} if stream else {"drop": 1}).encode()
            head = (f"POST /lmserve/api/models/main/predict{'?stream=1' if stream else ''} HTTP/1.1\r\n"
                    f"Host: {host}:{port}\r\nAuthorization: token {TOKEN}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            try:
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    cut = self.random.choice([len(head) // 2, len(head) + len(body) // 2, len(head) + len(body)])
                    sock.sendall((head + body)[:cut])
                    if stream and cut == len(head) + len(body):
                        sock.recv(200)  # the first partial, then gone
                self.count("disconnect", "sent")
            except OSError as exc:
                self.count("disconnect", f"error {type(exc).__name__}")
            time.sleep(0.05)

    def every_so_often(self, name: str, action) -> None:
        while not self._stop.wait(self.every[name]):
            try:
                self.count(name, action())
            except Exception as exc:  # noqa: BLE001 - counted, never fatal to the soak
                self.count(name, f"error {type(exc).__name__}: {str(exc)[:80]}")

    def scale(self) -> str:
        current = len(self.call("GET", "lmserve/api/models/main").json()["workers"])
        response = self.call("PUT", "lmserve/api/models/main", json={"workers": 1 if current >= 2 else 2})
        return str(response.status_code)

    def deploy_second(self) -> str:
        if self.call("GET", "lmserve/api/models/second").status_code == 200:
            return "undeploy " + str(self.call("DELETE", "lmserve/api/models/second").status_code)
        response = self.call("POST", "lmserve/api/models", json={"name": "second", "handler": HANDLER,
                                                                 "config": SECOND, "wait": True})
        if response.status_code == 201:
            answer = self.call("POST", "lmserve/api/models/second/predict", json={"to": "second"})
            return "deploy+predict ok" if answer.json() == {"to": "second"} else "deploy+predict wrong"
        return "deploy " + str(response.status_code)

    def kill_rank(self) -> str:
        workers = [w for w in self.call("GET", "lmserve/api/models/main").json()["workers"] if w["state"] in
                   ("ready", "busy")]
        ranks = [r["pid"] for w in workers for r in w["ranks"]]
        if not ranks:
            return "no rank to kill"
        os.kill(self.random.choice(ranks), signal.SIGKILL)
        return "killed"

    def sample(self) -> str:
        below = descendants(self.proc.pid)
        models = self.call("GET", "lmserve/api/models").json()["models"]
        rank_pids = [r["pid"] for m in models for w in m["workers"] for r in w["ranks"]]
        self.samples.append({"t": round(time.monotonic() - self.started, 1), "server_rss_mib": round(rss_mib(self.proc.pid), 1),
                             "server_fds": len(os.listdir(f"/proc/{self.proc.pid}/fd")),
                             "http_in_flight": self.in_flight(),
                             "ranks": len(rank_pids), "ranks_rss_mib": round(sum(rss_mib(p) for p in rank_pids), 1),
                             "processes_below": len(below)})
        return "sampled"

    def in_flight(self) -> float | None:
        """The server's ``lmjupyter_http_requests_in_flight``; this scrape counts itself (1 with nothing else)."""
        match = re.search(r"^lmjupyter_http_requests_in_flight (\S+)$", self.call("GET", "lmserve/metrics").text, re.M)
        return float(match.group(1)) if match else None

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> dict:
        self.start_server()
        response = self.call("POST", "lmserve/api/models", json={"name": "main", "handler": HANDLER, "config": MAIN,
                                                                 "wait": True})
        response.raise_for_status()
        self.started = time.monotonic()
        self.sample()
        threads = [threading.Thread(target=self.predictor, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=self.streamer), threading.Thread(target=self.disconnector)]
        threads += [threading.Thread(target=self.every_so_often, args=(name, action)) for name, action in
                    (("kill", self.kill_rank), ("scale", self.scale), ("deploy", self.deploy_second),
                     ("sample", self.sample))]
        for thread in threads:
            thread.start()
        time.sleep(self.duration)
        self._stop.set()
        for thread in threads:
            thread.join(90)
        hung_threads = [t.name for t in threads if t.is_alive()]
        self.sample()
        server_alive = self.proc.poll() is None
        below = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "killed after 60 s"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") and _running(p) for p in below):
            time.sleep(0.1)
        left = sorted(p for p in below if os.path.exists(f"/proc/{p}") and _running(p))
        latencies = sorted(self.latencies)
        return {"duration_s": self.duration, "counts": {k: dict(v) for k, v in self.counts.items()},
                "examples": self.examples,
                "samples": self.samples, "server_alive_at_end": server_alive, "server_exit": code,
                "processes_left": left, "threads_hung": hung_threads,
                "predict_latency_ms": {"p50": _pct(latencies, 0.5), "p99": _pct(latencies, 0.99),
                                       "max": round(1000 * latencies[-1], 1) if latencies else None}}


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pct(values: list[float], q: float):
    return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 2) if values else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="seconds (default 600)")
    parser.add_argument("--kill-every", type=float, default=30, help="seconds between rank kills (default 30)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmj-soak-") as workdir:
        result = Soak(workdir, args.duration, kill_every=args.kill_every).run()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
