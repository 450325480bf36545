from lmjupyter.compat.torchserve.util import timed

__all__ = ["timed"]
