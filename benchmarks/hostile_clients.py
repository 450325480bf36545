"""Hostile clients against ``lmjupyter serve`` (issue 13, part 3): do ordinary clients keep their latency?

    python benchmarks/hostile_clients.py              # 4 phases of 20 s: quiet, attack, quiet, attack
    python benchmarks/hostile_clients.py --phase 10   # shorter

Ordinary clients: 4 threads calling predict on an echo model (1 worker, batchSize 8) for the
whole run, each answer checked. Attack phases add at once: 300 slowloris connections (half a
request line, then silence; reopened when the server cuts them), 500 connections opened at once and
dropped mid-request every 5 s (in the headers, in the body, or before the answer; RST), 8 MiB bodies (413 at the headers), and
streams nobody reads (a handler streaming 5 MB each, at most 4 at a time). Reported per phase: p50/p99 of the ordinary
clients, their statuses, what the attackers got, the server's RSS and open fds at the phase's end.
The attackers run in processes of their own, so that they do not take the ordinary clients' GIL.
The claim checked: p99 under attack within 2x of the quiet phases.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
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
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reliability"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from hostile import connect, drop_mid_request, open_fds, predict_head, rss_mib, slowloris  # noqa: E402

TOKEN = "hostile-token"
CONFIG = {"deviceType": "cpu", "minWorkers": 1, "maxWorkers": 1, "batchSize": 8}


class Run:
    def __init__(self, workdir: str, kinds=("slowloris", "drop", "big", "unread")):
        self.kinds = kinds
        log = open(os.path.join(workdir, "server.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "lmjupyter.cli", "serve", "--port", "0", "--token", TOKEN,
                                      "--allow-root", os.path.join(HERE, "..", "tests", "handlers"),
                                      "--max-body-size", "1M", "--client-timeout", "10"],
                                     cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not (match := re.search(r"serving at (http://\S+)", open(log.name, errors="replace").read())):
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        self.url = match.group(1)
        self.headers = {"Authorization": f"token {TOKEN}"}
        for name, handler in (("echo", "lmjupyter.handlers.base:BaseHandler"),
                              ("firehose", os.path.join(HERE, "..", "tests", "handlers", "firehose.py"))):
            requests.post(self.url + "lmserve/api/models", headers=self.headers, timeout=120,
                          json={"name": name, "handler": handler, "config": CONFIG, "wait": True}).raise_for_status()
        self.phase = "warm-up"
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.status: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.attacks: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.stop = threading.Event()

    def ordinary(self, index: int) -> None:
        session, n = requests.Session(), 0
        session.headers.update(self.headers)
        while not self.stop.is_set():
            n += 1
            phase, started = self.phase, time.perf_counter()
            try:
                response = session.post(self.url + "lmserve/api/models/echo/predict", json={"c": index, "n": n},
                                        timeout=30)
                ok = response.status_code == 200 and response.json() == {"c": index, "n": n}
                outcome = "200" if ok else ("wrong" if response.status_code == 200 else str(response.status_code))
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            self.status[phase][outcome] += 1
            if outcome == "200":
                self.latency[phase].append(time.perf_counter() - started)

    def attack(self, seconds: float) -> dict:
        """Every attacker in a process of its own (none shares the ordinary clients' GIL) for ``seconds``."""
        results = multiprocessing.get_context("fork").Queue()
        procs = [multiprocessing.get_context("fork").Process(target=self.attacker, args=(kind, seconds, results))
                 for kind in self.kinds]
        for proc in procs:
            proc.start()
        counts: collections.Counter = collections.Counter()
        for _ in procs:
            counts.update(results.get(timeout=seconds + 60))
        for proc in procs:
            proc.join(30)
        return dict(counts)

    def attacker(self, kind: str, seconds: float, results) -> None:
        held: list[socket.socket] = []
        counts: collections.Counter = collections.Counter()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if kind == "slowloris":
                    held = [s for s in held if _open(s)]
                    held += slowloris(self.url, 300 - len(held))
                    counts["slowloris connections held"] = max(counts["slowloris connections held"], len(held))
                    time.sleep(0.5)
                elif kind == "drop":
                    drop_mid_request(self.url, TOKEN, "echo", 500)  # the "500 connections dropped"
                    counts["dropped mid-request"] += 500
                    time.sleep(5)
                elif kind == "big":
                    sock = connect(self.url)
                    sock.sendall(predict_head(self.url, TOKEN, "echo", 8 << 20))
                    answer = sock.recv(64)
                    sock.close()
                    counts["8 MiB body: " + answer[9:12].decode(errors="replace")] += 1
                    time.sleep(0.01)
                elif kind == "unread":
                    body = b'{"parts": 100, "size": 50000}'
                    sock = connect(self.url)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    sock.sendall(predict_head(self.url, TOKEN, "firehose", len(body), stream=True) + body)
                    held.append(sock)
                    counts["unread streams opened"] += 1
                    held = [s for s in held if _open(s)][-4:]
                    time.sleep(1.0)
            except OSError as exc:
                counts[f"{kind}: {type(exc).__name__}"] += 1
                time.sleep(0.1)
        for sock in held:
            sock.close()
        results.put(counts)

    def sample(self) -> dict:
        return {"server_rss_mib": round(rss_mib(self.proc.pid), 1), "server_fds": open_fds(self.proc.pid)}

    def run(self, phase_s: float) -> dict:
        threads = [threading.Thread(target=self.ordinary, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(3)  # warm-up
        phases = []
        for index, attack in enumerate((False, True, False, True)):
            name = f"{index + 1} {'attack' if attack else 'quiet'}"
            self.phase = name
            if attack:
                self.attacks[name] = self.attack(phase_s)
            else:
                time.sleep(phase_s)
            phases.append((name, self.sample()))
        self.stop.set()
        for thread in threads:
            thread.join(60)
        alive = self.proc.poll() is None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        result = {"phase_s": phase_s, "server_alive": alive, "phases": []}
        for name, sample in phases:
            values = sorted(self.latency[name])
            result["phases"].append({"phase": name, "answers": len(values), "p50_ms": _pct(values, 0.5),
                                     "p99_ms": _pct(values, 0.99), "statuses": dict(self.status[name]),
                                     "attacks": dict(self.attacks[name]), **sample})
        quiet = [p["p99_ms"] for p in result["phases"] if "quiet" in p["phase"]]
        attack = [p["p99_ms"] for p in result["phases"] if "attack" in p["phase"]]
        result["p99_attack_over_quiet"] = round(max(attack) / max(quiet), 2)
        return result


def _open(sock: socket.socket) -> bool:
    try:
        sock.setblocking(False)
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        try:
            sock.setblocking(True)
        except OSError:
            pass


def _pct(values: list[float], q: float):
    return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 2) if values else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=float, default=20, help="seconds per phase (default 20)")
    parser.add_argument("--attacks", default="slowloris,drop,big,unread", help="which attackers (default: all)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmj-hostile-") as workdir:
        result = Run(workdir, tuple(args.attacks.split(","))).run(args.phase)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
