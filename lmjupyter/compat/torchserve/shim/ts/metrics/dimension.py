from lmjupyter.compat.torchserve.metrics import Dimension

__all__ = ["Dimension"]
