from lmjupyter.compat.torchserve.distributed import BaseDeepSpeedHandler

__all__ = ["BaseDeepSpeedHandler"]
