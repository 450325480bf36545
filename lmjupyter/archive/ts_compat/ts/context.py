"""``from ts.context import Context`` for imported TorchServe handlers (type hints mostly)."""
from lmjupyter.worker.context import Context

__all__ = ["Context"]
