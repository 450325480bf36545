from lmjupyter.compat.torchserve.metrics import Metric

__all__ = ["Metric"]
