"""``context.metrics`` of TorchServe-style handlers: TorchServe's metrics API, recorded into Prometheus.

``context.metrics.add_time("HandlerTime", 12.5)``, ``add_counter``, ``add_size``,
``add_percent``, ``add_error``, ``add_metric`` and ``get_metric(...).add_or_update``
work as in TorchServe (the dimensions ``ModelName`` and ``Level`` are added the
same way). Updates are collected during a batch; the answering rank sends them to
the server after the batch's answers (``("metrics", [...])``), where they become
Prometheus metrics of the same name at ``/lmserve/metrics``, labelled by their
dimensions: counters are incremented, gauges set, histograms observed.
"""
from __future__ import annotations

import enum


class MetricTypes(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Dimension:
    """A ``name: value`` pair that labels a metric."""

    def __init__(self, name, value):
        self.name = name
        self.value = value

    def __str__(self):
        return f"{self.name}:{self.value}"

    def to_dict(self):
        return {"Name": self.name, "Value": self.value}


class MetricsCacheError(ValueError):
    """A metric used with a unit or dimensions that do not fit (TorchServe's MetricsCache*Error)."""


class Metric:
    """One named metric with fixed dimension names (``get_metric`` returns these)."""

    def __init__(self, cache: "MetricsCache", name: str, unit: str, dimension_names: list[str],
                 metric_type: MetricTypes):
        self.cache, self.name, self.unit = cache, name, unit
        self.dimension_names = list(dimension_names)
        self.metric_type = metric_type

    def add_or_update(self, value, dimension_values: list | None = None, request_id=""):
        values = [str(v) for v in (dimension_values or [])]
        if len(values) != len(self.dimension_names):
            raise MetricsCacheError(f"metric {self.name!r} has dimensions {self.dimension_names}; "
                                    f"got {len(values)} value(s): {values}")
        self.cache.pending.append((self.name, self.metric_type.value, self.unit, tuple(self.dimension_names),
                                   tuple(values), float(value)))

    def update(self, value):
        self.add_or_update(value, [])

    def __str__(self):
        return f"{self.name}.{self.unit}:{self.dimension_names}"


class MetricsCache:
    """TorchServe's metrics cache API over one list of pending updates."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.request_ids = None
        self.cache: dict[tuple[str, str], Metric] = {}
        self.pending: list[tuple] = []

    def set_request_ids(self, request_ids):
        self.request_ids = request_ids

    def drain(self) -> list[tuple]:
        """The updates since the last call (sent to the server after each batch)."""
        updates, self.pending = self.pending, []
        return updates

    # ---- TorchServe's API ---------------------------------------------------------------------
    def add_metric(self, name, value, unit, idx=None, dimensions=None, metric_type=MetricTypes.COUNTER):
        self._record(name, value, unit, self._default_dims(dimensions), metric_type)

    def add_counter(self, name, value, idx=None, dimensions=None):
        self._record(name, value, "count", self._default_dims(dimensions), MetricTypes.COUNTER)

    def add_time(self, name, value, idx=None, unit="ms", dimensions=None, metric_type=MetricTypes.GAUGE):
        if unit not in ("ms", "s"):
            raise MetricsCacheError("the unit for a timed metric should be one of ['ms', 's']")
        self._record(name, value, unit, self._default_dims(dimensions), metric_type)

    def add_size(self, name, value, idx=None, unit="MB", dimensions=None, metric_type=MetricTypes.GAUGE):
        if unit not in ("MB", "kB", "GB", "B"):
            raise MetricsCacheError("The unit for size based metric is one of ['MB','kB', 'GB', 'B']")
        self._record(name, value, unit, self._default_dims(dimensions), metric_type)

    def add_percent(self, name, value, idx=None, dimensions=None, metric_type=MetricTypes.GAUGE):
        self._record(name, value, "percent", self._default_dims(dimensions), metric_type)

    def add_error(self, name, value, dimensions=None):
        dims = list(dimensions or [])
        if "Level" not in [d.name for d in dims]:
            dims.append(Dimension("Level", "Error"))
        self._record(name, value, "", dims, MetricTypes.COUNTER)

    def get_metric(self, metric_name, metric_type=MetricTypes.COUNTER) -> Metric:
        metric = self.cache.get((metric_name, _type(metric_type).value))
        if metric is None:
            raise KeyError(f"metric {metric_name!r} of type {_type(metric_type).value} is not in the cache")
        return metric

    def add_metric_to_cache(self, metric_name, unit, dimension_names=None, metric_type=MetricTypes.COUNTER) -> Metric:
        metric_type = _type(metric_type)
        metric = Metric(self, metric_name, unit, list(dimension_names or []), metric_type)
        self.cache[(metric_name, metric_type.value)] = metric
        return metric

    # ---- helpers ---------------------------------------------------------------------------------
    def _default_dims(self, dimensions) -> list[Dimension]:
        dims = list(dimensions or [])  # a copy: never append to the caller's list (or a shared default)
        names = [d.name for d in dims]
        if "ModelName" not in names:
            dims.append(Dimension("ModelName", self.model_name))
        if "Level" not in names:
            dims.append(Dimension("Level", "Model"))
        return dims

    def _record(self, name, value, unit, dims: list[Dimension], metric_type) -> None:
        metric_type = _type(metric_type)
        names = [d.name for d in dims]
        metric = self.cache.get((name, metric_type.value))
        if metric is None:
            metric = self.add_metric_to_cache(name, unit, names, metric_type)
        elif metric.dimension_names != names:
            raise MetricsCacheError(f"metric {name!r} was first used with dimensions {metric.dimension_names}, "
                                    f"now with {names}")
        metric.add_or_update(value, [d.value for d in dims])


def _type(metric_type) -> MetricTypes:
    return metric_type if isinstance(metric_type, MetricTypes) else MetricTypes(str(metric_type).lower())
