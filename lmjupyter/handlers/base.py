"""The handler contract: what a model author writes.

A handler is a class with ``initialize(ctx)`` and ``handle(requests, ctx)``.
Subclass :class:`BaseHandler` to get ``handle`` as
``postprocess(inference(preprocess(requests)))``::

    from lmjupyter.handlers import BaseHandler

    class Upper(BaseHandler):
        def initialize(self, ctx):
            self.suffix = ctx.model_yaml_config.get("handler", {}).get("suffix", "")

        def inference(self, batch):
            return [str(item).upper() + self.suffix for item in batch]

``requests`` holds one item per client request in the batch (decoded JSON, or
bytes); the answer is a list of the same length. ``inference`` may be a
generator: each yielded list (one partial result per request) is streamed to
clients that asked for ``?stream=1``; the final answer is the generator's
``return`` value, or the last yielded list when it returns nothing.
"""
from __future__ import annotations

import inspect
from typing import Any


class RequestError(ValueError):
    """Raise (or return as one request's answer) to refuse that request with 400.

    ``param`` names the offending request field, so that clients (and the OpenAI
    routes) can say which one was wrong.
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class BaseHandler:
    """Every rank of a worker group builds one instance and calls it on every batch."""

    initialized = False

    def initialize(self, ctx) -> None:
        """Load the model. Runs once per rank before the worker takes requests."""
        self.initialized = True

    def preprocess(self, requests: list[Any]) -> Any:
        return requests

    def inference(self, batch: Any) -> Any:
        return batch

    def postprocess(self, outputs: Any) -> list[Any]:
        return outputs

    def handle(self, requests: list[Any], ctx) -> list[Any]:
        outputs = self.inference(self.preprocess(requests))
        if inspect.isgenerator(outputs):
            outputs = drain_stream(outputs, ctx)
        return self.postprocess(outputs)


def drain_stream(generator, ctx) -> Any:
    """Send each yielded partial result to the client; return the final answer."""
    last = None
    while True:
        try:
            last = next(generator)
        except StopIteration as stop:
            return stop.value if stop.value is not None else last
        ctx.send_intermediate(last)
