"""``from ts.torch_handler.base_handler import BaseHandler`` for imported TorchServe handlers."""
from lmjupyter.handlers import BaseHandler

__all__ = ["BaseHandler"]
