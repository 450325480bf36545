from lmjupyter.compat.torchserve.base_handler import BaseHandler

__all__ = ["BaseHandler"]
