"""One client request on its way through the queue to a worker and back."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

# An answer as the HTTP layer sends it: (status, content type, body); a TorchServe-style
# handler's may carry a fourth item (lmjupyter.ipc), which lmjupyter's own routes ignore.
Answer = tuple[int, str, bytes]
END_OF_STREAM = None  # put on a streaming request's queue after its final answer


class RequestFailed(Exception):
    """The request gets no answer from a handler; ``status`` is the HTTP code to send."""

    def __init__(self, status: int, message: str, **detail):
        super().__init__(message)
        self.status = status
        self.detail = detail


@dataclass(eq=False)
class PendingRequest:
    payload: bytes
    content_type: str
    future: asyncio.Future
    partials: asyncio.Queue | None = None  # set when the client streams
    meta: dict | None = None  # the request's id and headers, for TorchServe-style handlers
    started: float = field(default_factory=time.perf_counter)
    first_partial: float = 0.0             # perf_counter of the first partial (time to first token)
    last_partial: float = 0.0
    # Set by a continuous-batching worker holding the request: tells the worker to drop it.
    on_cancel: Callable[["PendingRequest"], None] | None = field(default=None, repr=False)
    _cancelled: bool = field(default=False, repr=False)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        """The HTTP layer sets this when the client goes away; a worker that holds the request hears of it."""
        if value and not self._cancelled:
            self._cancelled = True
            if self.on_cancel is not None:
                self.on_cancel(self)

    def answer(self, answer: Answer) -> None:
        if not self.future.done():
            self.future.set_result(answer)
            self._end_stream()

    def fail(self, error: RequestFailed) -> None:
        if not self.future.done():
            self.future.set_exception(error)
            self.future.exception()  # mark retrieved: a gone client must not log a warning
            self._end_stream()

    def _end_stream(self) -> None:
        if self.partials is not None:
            self.partials.put_nowait(END_OF_STREAM)

    def partial(self, answer: Answer) -> None:
        if self.partials is not None and not self._cancelled:
            self.partials.put_nowait(answer)
