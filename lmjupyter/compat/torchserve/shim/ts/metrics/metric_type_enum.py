from lmjupyter.compat.torchserve.metrics import MetricTypes

__all__ = ["MetricTypes"]
