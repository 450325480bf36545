"""Processes below a server, and a load of predict calls counted by outcome."""
from __future__ import annotations

import collections
import threading
import time

import requests

from serverproc import descendants, is_fork_server


def workers_below(pid: int) -> set[int]:
    """The processes below a server that a deploy started: agents and ranks, not the fork server."""
    return {p for p in descendants(pid) if not is_fork_server(p)}


class Load:
    """``threads`` clients calling predict on ``url`` until stopped; outcomes counted by kind:
    HTTP statuses, "wrong" (an answer that is not the request's echo), "refused" (no server)."""

    def __init__(self, url: str, headers: dict, threads: int = 4, timeout: float = 30.0):
        self.url, self.headers, self.timeout = url, headers, timeout
        self.counts: collections.Counter = collections.Counter()
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, index: int) -> None:
        session, n = requests.Session(), 0
        while not self._stop.is_set():
            n += 1
            payload = {"client": index, "n": n}
            started = time.monotonic()
            try:
                response = session.post(self.url, json=payload, headers=self.headers, timeout=self.timeout)
                outcome = str(response.status_code)
                if response.status_code == 200 and response.json() != payload:
                    outcome = "wrong"
            except requests.Timeout:
                outcome = "hung"
            except requests.ConnectionError:
                outcome = "refused"
                time.sleep(0.05)
            with self._lock:
                self.counts[outcome] += 1
                if outcome == "200":
                    self.latencies.append(time.monotonic() - started)

    def stop(self) -> collections.Counter:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self.counts
