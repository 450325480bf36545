"""The one error type the REST layer turns into ``{"error": {"message": ..., ...}}``."""
from __future__ import annotations


class ApiError(Exception):
    """A refused call: ``status`` is the HTTP code, ``detail`` extra JSON fields (key, line, ...)."""

    def __init__(self, status: int, message: str, **detail):
        super().__init__(message)
        self.status = status
        self.detail = {k: v for k, v in detail.items() if v is not None}

    def to_dict(self) -> dict:
        return {"error": {"message": str(self), **self.detail}}
