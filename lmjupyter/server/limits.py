"""What one client may cost the server: body size, and how long it may stall.

Both servers read request bodies of the REST routes as a stream (Tornado's
``stream_request_body``), so a body over ``max_body_size`` is refused with 413
as soon as its ``Content-Length`` is seen (or, for a chunked body, as soon as
the limit is passed), and never held whole in memory. ``lmjupyter serve`` also
closes a connection whose headers or body do not arrive within
``client_timeout`` seconds (slowloris), and a stream whose client stopped
reading for that long (its request is cancelled).
"""
from __future__ import annotations

import re

DEFAULT_MAX_BODY_SIZE = 64 << 20     # bytes; TorchServe's max_request_size is 6.5 MB
DEFAULT_CLIENT_TIMEOUT = 60.0        # seconds
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"64M"``, ``"1G"``, ``"4096"`` (bytes), ``"512KiB"``: a byte count >= 1."""
    if isinstance(text, int):
        size = text
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
        if not match:
            raise ValueError(f"{text!r} is not a size (examples: 65536, 64M, 1G)")
        size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if size < 1:
        raise ValueError(f"{text!r}: a size must be at least 1 byte")
    return size


def describe_size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


class StreamedBody:
    """Mixin of the REST handlers: the body arrives in chunks and is kept only up to the limit.

    The handler class must also carry Tornado's ``_stream_request_body = True``
    (``route_table`` sets it). ``prepare`` refuses an announced oversize body at
    once; ``body_or_413`` (called before each verb) joins the chunks into
    ``request.body``, or raises the 413 for a chunked body that went over.
    """

    _chunks: list | None = None
    _received = 0
    _too_large = False

    @property
    def max_body_size(self) -> int:
        return self.settings.get("lmserve_max_body_size", DEFAULT_MAX_BODY_SIZE)

    def oversize_message(self, size: int | None) -> str:
        got = f" of {describe_size(size)}" if size is not None else ""
        return (f"request body{got} is larger than the server's limit of {describe_size(self.max_body_size)} "
                "(lmjupyter serve --max-body-size, c.LMServe.max_body_size)")

    def announced_too_large(self) -> bool:
        length = self.request.headers.get("Content-Length")
        try:
            return length is not None and int(length) > self.max_body_size
        except ValueError:
            return False  # Tornado itself refuses a malformed Content-Length

    def data_received(self, chunk: bytes) -> None:
        if self._too_large or self._finished:
            return
        self._received += len(chunk)
        if self._received > self.max_body_size:
            self._too_large, self._chunks = True, None  # keep nothing more; answered 413 at the verb
            return
        if self._chunks is None:
            self._chunks = []
        self._chunks.append(chunk)

    def join_body(self) -> bool:
        """Put the received body in ``request.body``; False when it went over the limit."""
        if self._too_large:
            return False
        if self._chunks is not None:
            self.request.body = b"".join(self._chunks)
            self._chunks = None
        return True
