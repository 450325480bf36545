"""The /v1 routes: models, completions, chat completions, answered whole or as server-sent events.

Mixins over a server's base handler, like :mod:`lmjupyter.server.api` (they are in its
route table): ``lmjupyter serve`` mounts them at ``/v1/...`` and ``/lmserve/v1/...``, the
Jupyter extension at ``<base_url>lmserve/v1/...`` behind Jupyter's auth.

A call becomes one native request per choice (:mod:`.translate`), submitted to the
model's queue like any predict request, so batching, job tickets, queue limits and
timeouts are the model's own. A stream waits for the first token (or the failure)
before it sends headers, so a request the worker refuses still gets its HTTP status;
after that, every native partial result becomes one ``data:`` chunk. A client that
goes away marks each of its sequences cancelled, as the native predict route does.
"""
from __future__ import annotations

import asyncio
import functools
import json
import time

from tornado.iostream import StreamClosedError

from lmjupyter.engine.engine import BUILTIN_CAUSAL_LM
from lmjupyter.engine.request import END_OF_STREAM, RequestFailed
from lmjupyter.engine.states import ModelState
from lmjupyter.errors import ApiError
from lmjupyter.server.openai.errors import OpenAIError, from_native
from lmjupyter.server.openai.shapes import DONE, Shaper
from lmjupyter.server.openai.translate import Call, parse_chat, parse_completion, split_model

JSON_TYPE = "application/json"
GONE = object()  # put on an event queue when the client went away


def openai_errors(method):
    """Every refusal as ``{"error": {"message", "type", "param", "code"}}`` with its status."""
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except OpenAIError as exc:
            self.send_openai_error(exc)
        except ApiError as exc:
            self.send_openai_error(OpenAIError(exc.status, str(exc), param="model" if exc.status == 404 else None))
        except RequestFailed as exc:
            self.send_openai_error(OpenAIError(exc.status, str(exc)))
    return wrapper


class OpenAIMixin:
    """What the /v1 routes share: the engine, the causal-LM check, errors in OpenAI's shape."""

    execute_verbs = ("post",)  # Jupyter's authorizer sees these as "execute" on resource lmserve, as predict

    @property
    def engine(self):
        return self.settings["lmserve_engine"]

    def check_xsrf_cookie(self):
        """Token clients (the standalone server's only kind); Jupyter puts its own check back."""
        return

    def send_openai_error(self, exc: OpenAIError) -> None:
        if self._finished:
            return
        if self._headers_written:  # mid-stream: an error event, as OpenAI sends one
            self.finish(b"data: " + exc.body() + b"\n\n")
            return
        self.clear()
        self.set_status(exc.status)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(exc.body())

    def write_error(self, status_code: int, **kwargs) -> None:
        """Tornado's own errors (403 from Jupyter's auth, 405, an uncaught exception) in OpenAI's shape."""
        exc = kwargs.get("exc_info", (None, None))[1]
        message = self._reason
        if exc is not None and status_code >= 500:
            message = f"{type(exc).__name__}: {exc}"
        elif getattr(exc, "log_message", None):
            message = exc.log_message
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(OpenAIError(status_code, message).body())

    def unauthorized_body(self, message: str) -> dict:
        """The standalone server's 401 (missing or wrong token) in OpenAI's shape."""
        return OpenAIError(401, message).to_dict()

    def request_json(self):
        try:
            return json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise OpenAIError(400, f"the request body is not valid JSON: {exc}") from None

    def causal_lm(self, name: str, version: str | None):
        """The model a call names, refused unless the built-in causal-LM handler serves it."""
        try:
            model = self.engine.model(name, version)
        except ApiError as exc:
            raise OpenAIError(404, str(exc), param="model", code="model_not_found") from None
        if model.handler != BUILTIN_CAUSAL_LM:
            raise OpenAIError(400, f"model {name!r} is not a causal LM served by the built-in handler (its handler "
                                   f"is {model.handler}); the /v1 routes serve models deployed from a Hugging Face "
                                   "folder without a handler. Use its predict route instead.",
                              param="model", code="model_not_supported")
        return model

    def send_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(json.dumps(data))


class ModelsHandler(OpenAIMixin):
    """``GET /v1/models``: the deployed causal LMs (``name``; ``name:version`` when a name has several)."""

    @openai_errors
    async def get(self, model_id: str | None = None):
        if model_id is not None:
            name, version = split_model(model_id)
            self.send_json(_model_object(model_id, self.causal_lm(name, version)))
            return
        by_name: dict[str, list] = {}
        for model in self.engine.models():
            if model.handler == BUILTIN_CAUSAL_LM and model.state not in (ModelState.FAILED, ModelState.STOPPING):
                by_name.setdefault(model.name, []).append(model)
        data = []
        for name, models in by_name.items():
            default = self.engine.default_version(name)
            data += [_model_object(name, m) for m in models if m.version == default]
            if len(models) > 1:
                data += [_model_object(f"{name}:{m.version}", m) for m in models]
        self.send_json({"object": "list", "data": data})


def _model_object(model_id: str, model) -> dict:
    return {"id": model_id, "object": "model", "created": int(model.created), "owned_by": "lmjupyter",
            "version": model.version, "state": model.state.value}


class GenerateMixin(OpenAIMixin):
    """POST of a completion or a chat completion; ``parse`` turns the body into a :class:`Call`."""

    parse = None
    _pending: list = []
    _events = None
    _gone = None

    @openai_errors
    async def post(self):
        started = time.perf_counter()
        call = type(self).parse(self.request_json())
        model = self.causal_lm(call.name, call.version)
        status = 500
        try:
            self._pending = _submit(model, call)
            if call.stream:
                status = await self._stream(model, call)
            else:
                status = await self._whole(model, call)
        except (OpenAIError, RequestFailed) as exc:
            status = exc.status
            raise
        finally:
            model.metrics.answered(status, time.perf_counter() - started)

    async def _whole(self, model, call: Call) -> int:
        self._gone = asyncio.get_running_loop().create_future()
        futures = [p.future for p in self._pending]
        waiting = set(futures)
        while waiting:
            done, waiting = await asyncio.wait(waiting | {self._gone}, return_when=asyncio.FIRST_COMPLETED)
            if self._gone in done:
                return 499
            waiting.discard(self._gone)
            for future in done:  # the first failure answers the call; the other sequences are cancelled
                failure = _failure(future, call)
                if failure is not None:
                    self._cancel()
                    raise failure
        answers = [_answer(f) for f in futures]
        self.send_json(Shaper(call, model.model_dir).answer(answers))
        return 200

    async def _stream(self, model, call: Call) -> int:
        events = self._events = _Events(self._pending)
        try:
            return await self._send_events(model, call, events)
        except StreamClosedError:
            self._cancel()
            return 499
        finally:
            events.close()

    async def _send_events(self, model, call: Call, events: "_Events") -> int:
        item = await events.get()
        if item is GONE:
            return 499
        if item[1] is END_OF_STREAM:  # refused before a single token: a plain HTTP error
            failure = _failure(self._pending[item[0]].future, call)
            if failure is not None:
                self._cancel()
                raise failure
        shaper = Shaper(call, model.model_dir)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        for index in range(len(self._pending)):
            self.write(shaper.opening(index))
        answers: list = [None] * len(self._pending)
        remaining = len(self._pending)
        while True:
            index, value = item
            if value is END_OF_STREAM:
                failure = _failure(self._pending[index].future, call)
                if failure is not None:
                    self._cancel()
                    self.send_openai_error(failure)
                    return failure.status
                answers[index] = _answer(self._pending[index].future)
                self.write(shaper.closing(index, answers[index]))
                remaining -= 1
                if remaining == 0:
                    break
            elif value[0] < 400:
                self.write(shaper.token_bytes(index, value[2]))
            item = events.get_nowait()  # write out whatever else is there, then flush once
            if item is None:
                await self.flush()
                item = await events.get()
            if item is GONE:
                return 499
        if call.include_usage:
            self.write(shaper.usage_chunk(answers))
        self.finish(DONE)
        return 200

    def _cancel(self) -> None:
        for pending in self._pending:
            pending.cancelled = True

    def on_connection_close(self):
        """A client that goes away cancels its sequences; the handler stops waiting for them."""
        super().on_connection_close()  # a body still arriving ends too (else the handler waits forever)
        self._cancel()
        if self._events is not None:
            self._events.gone()
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)


class CompletionsHandler(GenerateMixin):
    """``POST /v1/completions``."""

    parse = staticmethod(parse_completion)


class ChatCompletionsHandler(GenerateMixin):
    """``POST /v1/chat/completions``: the model folder's chat template makes the prompt."""

    parse = staticmethod(parse_chat)


def _submit(model, call: Call) -> list:
    """One native request per choice; if the queue refuses one, the others are withdrawn."""
    pending = []
    try:
        for native in call.natives:
            pending.append(model.submit(json.dumps(native).encode(), JSON_TYPE, call.stream))
    except RequestFailed:
        for request in pending:
            request.cancelled = True
        raise
    return pending


def _failure(future, call: Call) -> OpenAIError | None:
    """The call's error when this sequence failed, else None."""
    try:
        status, _, body = future.result()
    except RequestFailed as exc:
        return OpenAIError(exc.status, str(exc))
    return from_native(status, body, call.rename) if status >= 400 else None


def _answer(future) -> dict:
    return json.loads(future.result()[2])


class _Events:
    """The sequences' partial results and ends in arrival order: ``(choice, answer)``, with
    ``END_OF_STREAM`` as the answer when a sequence ended; :data:`GONE` once the client left."""

    def __init__(self, pending: list):
        self._tasks: list[asyncio.Task] = []
        if len(pending) == 1:  # the common case: read the request's own queue, no task in between
            self._queue, self._single = pending[0].partials, True
            return
        self._queue, self._single = asyncio.Queue(), False
        self._tasks = [asyncio.ensure_future(self._pump(i, p.partials)) for i, p in enumerate(pending)]

    async def _pump(self, index: int, partials: asyncio.Queue) -> None:
        while True:
            value = await partials.get()
            if value is GONE:
                return
            self._queue.put_nowait((index, value))
            if value is END_OF_STREAM:
                return

    def _wrap(self, value):
        return value if value is GONE or not self._single else (0, value)

    async def get(self):
        return self._wrap(await self._queue.get())

    def get_nowait(self):
        """The next event if one is waiting, else None."""
        if self._queue.empty():
            return None
        return self._wrap(self._queue.get_nowait())

    def gone(self) -> None:
        self._queue.put_nowait(GONE)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


# Patterns relative to a prefix: the route table mounts them under lmserve/ (both servers),
# and lmjupyter serve also at its root, where OpenAI clients look for /v1.
ROUTES = [
    ("v1/models", ModelsHandler),
    ("v1/models/([^/]+)", ModelsHandler),
    ("v1/completions", CompletionsHandler),
    ("v1/chat/completions", ChatCompletionsHandler),
]
