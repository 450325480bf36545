from lmjupyter.compat.torchserve.distributed import BasePippyHandler

__all__ = ["BasePippyHandler"]
