"""From ``GET lmserve/metrics`` (Prometheus text) to latency percentiles and requests/s over time.

Each scrape gives cumulative histogram buckets; the difference between two
scrapes is the histogram of the requests answered in between, from which a
percentile is interpolated inside its bucket as Prometheus' ``histogram_quantile``
does. Requests per second is the count's difference over the time between scrapes.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

LATENCY = "lmjupyter_request_latency_seconds"
QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class Histogram:
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count
    count: float = 0.0

    def minus(self, older: "Histogram | None") -> "Histogram":
        if older is None:
            return self
        return Histogram({le: n - older.buckets.get(le, 0.0) for le, n in self.buckets.items()},
                         self.count - older.count)

    def plus(self, other: "Histogram") -> "Histogram":
        keys = set(self.buckets) | set(other.buckets)
        return Histogram({le: self.buckets.get(le, 0.0) + other.buckets.get(le, 0.0) for le in keys},
                         self.count + other.count)


def parse_latency(text: str) -> dict[str, Histogram]:
    """The request-latency histogram of each model in a Prometheus exposition."""
    out: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.name != LATENCY:
            continue
        for sample in family.samples:
            model = sample.labels.get("model", "")
            hist = out.setdefault(model, Histogram())
            if sample.name.endswith("_bucket"):
                hist.buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_count"):
                hist.count = sample.value
    return out


def quantile(q: float, hist: Histogram) -> float | None:
    """Linear interpolation inside the bucket holding the q-th request; None without requests."""
    bounds = sorted(hist.buckets)
    total = hist.buckets.get(math.inf, hist.count)
    if total <= 0 or not bounds:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = hist.buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # beyond the last finite bucket: its bound is all we know
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = le, count
    return lower


class MetricsHistory:
    """A bounded window of scrapes, turned into plot series per model (or all models)."""

    def __init__(self, maxlen: int = 90):
        self.points: deque[tuple[float, dict[str, Histogram]]] = deque(maxlen=maxlen + 1)

    def add(self, text: str, now: float | None = None) -> None:
        self.points.append((time.time() if now is None else now, parse_latency(text)))

    def series(self, model: str | None = None) -> dict[str, list]:
        """``t`` (seconds before now), ``p50``/``p90``/``p99`` (ms, None when idle), ``rps``."""
        out: dict[str, list] = {"t": [], "rps": [], **{f"p{round(q * 100)}": [] for q in QUANTILES}}
        points = list(self.points)
        if len(points) < 2:
            return out
        now = points[-1][0]
        for (t0, older), (t1, newer) in zip(points, points[1:]):
            delta = _select(newer, model).minus(_select(older, model))
            out["t"].append(t1 - now)
            out["rps"].append(max(delta.count, 0.0) / max(t1 - t0, 1e-6))
            for q in QUANTILES:
                value = quantile(q, delta)
                out[f"p{round(q * 100)}"].append(None if value is None else value * 1000.0)
        return out


def summary(history: "MetricsHistory", model: str | None = None) -> str:
    """Percentiles of every request since the server started, e.g. 'p50 3.1 ms, p99 9.8 ms (120 requests)'."""
    if not history.points:
        return ""
    total = _select(history.points[-1][1], model)
    if total.count <= 0:
        return "no requests yet"
    parts = [f"p{round(q * 100)} {quantile(q, total) * 1000:.3g} ms" for q in QUANTILES]
    return f"{', '.join(parts)} ({total.count:.0f} requests since start)"


def _select(snapshot: dict[str, Histogram], model: str | None) -> Histogram:
    if model is not None:
        return snapshot.get(model, Histogram())
    total = Histogram()
    for hist in snapshot.values():
        total = total.plus(hist)
    return total
