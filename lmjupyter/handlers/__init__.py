"""Model handlers: the base class users subclass, and the built-in handlers."""
from lmjupyter.handlers.base import BaseHandler, RequestError

__all__ = ["BaseHandler", "RequestError"]
