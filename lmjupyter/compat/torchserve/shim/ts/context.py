from lmjupyter.compat.torchserve.context import Context, RequestProcessor

__all__ = ["Context", "RequestProcessor"]
