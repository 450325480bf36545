"""Prometheus metrics of one engine, plus the small summary the describe route shows.

Each engine has its own CollectorRegistry, so several servers in one process
(tests, a notebook) never collide. Recording is a few dict look-ups per request.
Handlers' own metrics (TorchServe's ``context.metrics``) arrive from the ranks as
updates and become metrics of their own name, labelled by their dimensions.
"""
from __future__ import annotations

import logging
import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("lmjupyter")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
TOKEN_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1, 2.5)


class EngineMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("lmjupyter_requests", "Requests answered, by model and HTTP status",
                                ["model", "status"], registry=self.registry)
        self.latency = Histogram("lmjupyter_request_latency_seconds", "Time from arrival to answer",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Gauge("lmjupyter_queue_depth", "Requests waiting for a worker", ["model"],
                           registry=self.registry)
        self.batch_size = Histogram("lmjupyter_batch_size", "Requests per batch sent to a worker",
                                    ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.restarts = Counter("lmjupyter_worker_restarts", "Worker groups replaced after a failure",
                                ["model"], registry=self.registry)
        # continuous batching (generation)
        self.ttft = Histogram("lmjupyter_time_to_first_token_seconds",
                              "Arrival to first streamed token (streamed requests)", ["model"],
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("lmjupyter_inter_token_latency_seconds", "Between streamed tokens of a request",
                             ["model"], buckets=TOKEN_BUCKETS, registry=self.registry)
        self.running = Gauge("lmjupyter_sequences_running", "Sequences in the workers' running batches",
                             ["model"], registry=self.registry)
        self.running_peak = Gauge("lmjupyter_sequences_running_peak", "Most sequences running at once since deploy",
                                  ["model"], registry=self.registry)
        self.waiting = Gauge("lmjupyter_sequences_waiting", "Sequences waiting for a slot (server and workers)",
                             ["model"], registry=self.registry)
        self.slots_used = Gauge("lmjupyter_kv_slots_used", "KV-cache slots held by running sequences", ["model"],
                                registry=self.registry)
        self.slots_total = Gauge("lmjupyter_kv_slots_total", "KV-cache slots of the ready workers", ["model"],
                                 registry=self.registry)
        self.tokens = Counter("lmjupyter_generated_tokens", "Tokens generated", ["model"], registry=self.registry)
        self.cancelled = Counter("lmjupyter_cancelled_requests", "Requests cancelled by their client while a "
                                 "worker held them", ["model"], registry=self.registry)
        self._handler_metrics: dict[str, tuple] = {}  # name -> (type, label names, metric or None if refused)
        # HTTP requests of this engine's routes being handled (server/api.py's InFlight, the fast predict path):
        # a plain int on the event loop, read at scrape time, so counting costs the hot path nothing
        self.http_in_flight = 0
        Gauge("lmjupyter_http_requests_in_flight", "HTTP requests whose handling has started and not ended "
              "(answered, or the client left); a scrape counts itself", registry=self.registry
              ).set_function(lambda: self.http_in_flight)

    def http_request_started(self):
        """Count one HTTP request in; the function returned counts it out, once, however many of the
        request's endings (its answer, its client leaving, both) call it."""
        self.http_in_flight += 1
        counted = True

        def ended() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.http_in_flight -= 1
        return ended

    def for_model(self, name: str) -> "ModelMetrics":
        return ModelMetrics(self, name)

    def remove(self, name: str) -> None:
        for metric in (self.latency, self.queue, self.batch_size, self.restarts, self.ttft, self.itl, self.running,
                       self.running_peak, self.waiting, self.slots_used, self.slots_total, self.tokens,
                       self.cancelled):
            try:
                metric.remove(name)
            except KeyError:
                pass

    def handler_metric(self, update: tuple) -> None:
        """Record one ``(name, type, unit, dimension names, dimension values, value)`` from a handler."""
        name, kind, unit, dimension_names, dimension_values, value = update
        entry = self._handler_metrics.get(name)
        if entry is None:
            entry = self._handler_metrics[name] = (kind, dimension_names, self._new_handler_metric(
                name, kind, unit, dimension_names))
        if entry[2] is None or entry[0] != kind or entry[1] != dimension_names:
            return  # refused at its first use (logged then), or used with another type or dimensions
        metric = entry[2].labels(*dimension_values) if dimension_names else entry[2]
        if kind == "counter":
            if value >= 0:
                metric.inc(value)
        elif kind == "histogram":
            metric.observe(value)
        else:
            metric.set(value)

    def _new_handler_metric(self, name: str, kind: str, unit: str, dimension_names: tuple):
        metric_type = {"counter": Counter, "histogram": Histogram}.get(kind, Gauge)
        labels = [re.sub(r"[^A-Za-z0-9_]", "_", d) for d in dimension_names]
        try:
            return metric_type(_prometheus_name(name), f"handler metric {name} ({unit or 'no unit'})", labels,
                               registry=self.registry)
        except ValueError as exc:  # a clash with another metric's name, or a reserved label name
            log.warning("handler metric %r is not exported to Prometheus: %s", name, exc)
            return None

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """The metrics of one model, with children bound once so the hot path does no label look-ups."""

    def __init__(self, engine: EngineMetrics, name: str):
        self._engine, self._name = engine, name
        self._latency = engine.latency.labels(name)
        self._queue = engine.queue.labels(name)
        self._batch = engine.batch_size.labels(name)
        self._restarts = engine.restarts.labels(name)
        self._status: dict[int, Counter] = {}
        self.requests_total = 0
        self.errors_total = 0
        self.batches_total = 0
        self.batched_requests = 0
        self.max_batch = 0
        self.restarts_total = 0
        self.sequence_source = None   # the served model's sequence_counts(), for the gauges
        self.peak_running = 0
        self.generated_total = 0
        self.cancelled_total = 0
        self._ttft, self._itl = engine.ttft.labels(name), engine.itl.labels(name)
        self._tokens, self._cancelled = engine.tokens.labels(name), engine.cancelled.labels(name)

    def answered(self, status: int, seconds: float) -> None:
        counter = self._status.get(status)
        if counter is None:
            counter = self._status[status] = self._engine.requests.labels(self._name, str(status))
        counter.inc()
        self._latency.observe(seconds)
        self.requests_total += 1
        if status >= 400:
            self.errors_total += 1

    def batch(self, size: int) -> None:
        self._batch.observe(size)
        self.batches_total += 1
        self.batched_requests += size
        self.max_batch = max(self.max_batch, size)

    def queue_depth(self, depth: int) -> None:
        self._queue.set(depth)

    def handler_metrics(self, updates: list) -> None:
        """Metrics a handler recorded during a batch (``("metrics", updates)`` from its answering rank)."""
        for update in updates:
            try:
                self._engine.handler_metric(update)
            except (TypeError, ValueError) as exc:  # a malformed update must not disturb serving
                log.warning("model %s: handler metric %r ignored: %s", self._name, update[:1], exc)

    def restart(self) -> None:
        self._restarts.inc()
        self.restarts_total += 1

    # ---- continuous batching ------------------------------------------------------------
    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def generated(self, count: int) -> None:
        if count > 0:
            self._tokens.inc(count)
            self.generated_total += count

    def cancelled(self) -> None:
        self._cancelled.inc()
        self.cancelled_total += 1

    def sequences_changed(self) -> None:
        if self.sequence_source is None:
            return
        counts = self.sequence_source()
        engine, name = self._engine, self._name
        self.peak_running = max(self.peak_running, counts["running"])
        engine.running.labels(name).set(counts["running"])
        engine.running_peak.labels(name).set(self.peak_running)
        engine.waiting.labels(name).set(counts["waiting"])
        engine.slots_used.labels(name).set(counts["running"])
        engine.slots_total.labels(name).set(counts["slots"])

    def summary(self) -> dict:
        return {"requests_total": self.requests_total, "errors_total": self.errors_total,
                "batches_total": self.batches_total, "max_batch_size": self.max_batch,
                "mean_batch_size": round(self.batched_requests / self.batches_total, 3) if self.batches_total else 0,
                "worker_restarts": self.restarts_total,
                **({"generated_tokens": self.generated_total, "peak_running": self.peak_running,
                    "cancelled": self.cancelled_total} if self.sequence_source is not None and self.generated_total else {})}


def _prometheus_name(name: str) -> str:
    """A valid Prometheus metric name: other characters become ``_``, a leading digit gets one."""
    clean = re.sub(r"[^A-Za-z0-9_:]", "_", str(name))
    return clean if re.match(r"[A-Za-z_:]", clean) else "_" + clean
