"""TorchServe's REST paths, mounted beside lmjupyter's own by the one route table (server/api.py).

Inference: ``GET /ping``, ``/predictions/{model}[/{version}[/{path}]]`` (GET, POST or
PUT, as TorchServe takes them: ``curl -T file`` sends PUT). Management: ``/models``
(GET list, POST register), ``/models/{m}[/{v}]`` (GET describe, PUT scale, DELETE
unregister), ``PUT /models/{m}/{v}/set-default``. On ``lmjupyter serve`` they sit at
the root, on one port, behind the same token as every route; in Jupyter under
``<base_url>lmserve/``, behind Jupyter's auth. Bodies are TorchServe's, pretty-printed
JSON as its frontend writes them; errors are ``{"code", "type", "message"}``.

A prediction is answered as TorchServe answers it: the handler's bytes with the
content type, status and headers it set, and an ``x-request-id`` header; when the
handler streams (``send_intermediate_predict_response``), each partial result is
sent as one HTTP/1.1 chunk as soon as it comes, the final answer last.
"""
from __future__ import annotations

import functools
import json
import time
import uuid

from tornado.iostream import StreamClosedError

from lmjupyter.compat.torchserve import management
from lmjupyter.compat.torchserve.meta import request_meta
from lmjupyter.engine.request import END_OF_STREAM, RequestFailed
from lmjupyter.errors import ApiError
from lmjupyter.server.api import ApiMixin

JSON_TYPE = "application/json"
ERROR_TYPES = {400: "BadRequestException", 401: "InvalidKeyException", 403: "InvalidModelVersionException",
               404: "ModelNotFoundException", 405: "MethodNotAllowedException", 409: "ConflictStatusException",
               413: "RequestEntityTooLarge", 502: "InternalServerException", 503: "ServiceUnavailableException",
               504: "RequestTimeoutException", 507: "InsufficientStorageException"}


def pretty(data) -> bytes:
    """JSON as TorchServe's frontend writes it (Gson, pretty printing): two-space indent, then a newline."""
    return json.dumps(data, indent=2).encode() + b"\n"


def error_body(status: int, message: str, error_type: str | None = None) -> bytes:
    return pretty({"code": status, "type": error_type or ERROR_TYPES.get(status, "InternalServerException"),
                   "message": message})


def torchserve_errors(method):
    """Refusals as TorchServe's ``{"code", "type", "message"}``, with the status they carry."""
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        if not self.join_body():   # the body arrived in chunks and went over the server's limit
            self.set_header("Connection", "close")
            self.send_torchserve_error(413, self.oversize_message(None))
            return
        try:
            return await method(self, *args, **kwargs)
        except ApiError as exc:
            self.send_torchserve_error(exc.status, str(exc), exc.detail.get("ts_type"))
        except RequestFailed as exc:
            self.send_torchserve_error(exc.status, str(exc))
    return wrapper


class TorchServeMixin(ApiMixin):
    _request_id = None  # a prediction's x-request-id, kept on its error answers too

    def send_torchserve(self, status: int, data) -> None:
        self.set_status(status)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(pretty(data))

    def send_torchserve_error(self, status: int, message: str, error_type: str | None = None) -> None:
        if self._finished:
            return
        self.clear()
        self.set_status(status)
        self.set_header("Content-Type", JSON_TYPE)
        if self._request_id:
            self.set_header("x-request-id", self._request_id)
        self.finish(error_body(status, message, error_type))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = f"{type(exc).__name__}: {exc}" if exc is not None and status_code >= 500 else self._reason
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(error_body(status_code, message))

    def params(self) -> dict:
        """Query parameters (last value wins), or a JSON body's keys as TorchServe also accepts them."""
        params = {key: values[-1].decode() for key, values in self.request.query_arguments.items()}
        mime = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if mime == JSON_TYPE and self.request.body:
            body = self.json_body()
            if not isinstance(body, dict):
                raise ApiError(400, "request body must be a JSON object", ts_type="BadRequestException")
            params.update(body)
        return params


class TorchServePingHandler(TorchServeMixin):
    @torchserve_errors
    async def get(self):
        self.send_torchserve(*management.ping(self.engine))


class TorchServePredictionsHandler(TorchServeMixin):
    """``/predictions/{model}[/{version}[/{url_path}]]``: one request, answered or streamed as TorchServe does."""

    execute_verbs = ("get", "post", "put")  # Jupyter's authorizer sees these as "execute" on resource lmserve
    _pending = None

    @torchserve_errors
    async def post(self, name, version=None, url_path=""):
        model = management.find_model(self.engine, name, version)
        self._request_id = request_id = str(uuid.uuid4())
        self.set_header("x-request-id", request_id)
        # TorchServe hands the handler these two headers besides the client's
        meta = request_meta(self.request, (("url_path", url_path or ""), ("explain", "False")), request_id)
        started, status = time.perf_counter(), 500
        try:
            self._pending = pending = model.submit(self.request.body, self.request.headers.get("Content-Type", ""),
                                                   True, meta)
            status = await self._answer(pending, native=not model.request_meta)
        except RequestFailed as exc:
            status = exc.status
            raise
        finally:
            model.metrics.answered(status, time.perf_counter() - started)

    get = put = post

    async def _answer(self, pending, native: bool) -> int:
        first = await pending.partials.get()
        if first is END_OF_STREAM:
            return self._finish_with(pending.future.result(), native)
        self._head(first, native)
        try:
            self.write(first[2])
            await self.flush()
            while (partial := await pending.partials.get()) is not END_OF_STREAM:
                self.write(partial[2])
                await self.flush()
            try:
                self.finish(pending.future.result()[2])
            except RequestFailed:  # the status is sent already: end the stream where it broke
                self.finish()
        except StreamClosedError:
            pending.cancelled = True
            return 499
        return first[0]

    def _head(self, answer, native: bool) -> None:
        status, content_type = answer[0], answer[1]
        extra = answer[3] if len(answer) > 3 else {}
        self.set_status(status, extra.get("phrase") or None)
        for key, value in (extra.get("headers") or {}).items():
            self.set_header(key, value)
        self.set_header("Content-Type", content_type)

    def _finish_with(self, answer, native: bool) -> int:
        status, _, body = answer[:3]
        extra = answer[3] if len(answer) > 3 else {}
        if status >= 400 and (extra.get("error_type") or native):
            self.send_torchserve_error(status, _error_message(body), extra.get("error_type"))
            return status
        self._head(answer, native)
        self.finish(body)
        return status

    def on_connection_close(self):
        """A client that goes away cancels its request; the worker is not disturbed."""
        super().on_connection_close()  # a body still arriving ends too (else the handler waits forever)
        if self._pending is not None:
            self._pending.cancelled = True


def _error_message(body: bytes) -> str:
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")


class TorchServeModelsHandler(TorchServeMixin):
    @torchserve_errors
    async def get(self):
        self.send_torchserve(*management.list_models(self.engine, self.params()))

    @torchserve_errors
    async def post(self):
        self.send_torchserve(*await management.register(self.engine, self.params()))


class TorchServeModelHandler(TorchServeMixin):
    @torchserve_errors
    async def get(self, name, version=None):
        self.send_torchserve(*management.describe(self.engine, name, version))

    @torchserve_errors
    async def put(self, name, version=None):
        self.send_torchserve(*await management.scale(self.engine, name, version, self.params()))

    @torchserve_errors
    async def delete(self, name, version=None):
        self.send_torchserve(*await management.unregister(self.engine, name, version))


class TorchServeSetDefaultHandler(TorchServeMixin):
    @torchserve_errors
    async def put(self, name, version):
        self.send_torchserve(*management.set_default(self.engine, name, version))


ROUTES = [
    ("ping", TorchServePingHandler),
    ("predictions/([^/]+)", TorchServePredictionsHandler),
    ("predictions/([^/]+)/([^/]+)", TorchServePredictionsHandler),
    ("predictions/([^/]+)/([^/]+)/(.+)", TorchServePredictionsHandler),
    ("models", TorchServeModelsHandler),
    ("models/([^/]+)", TorchServeModelHandler),
    ("models/([^/]+)/([^/]+)", TorchServeModelHandler),
    ("models/([^/]+)/([^/]+)/set-default", TorchServeSetDefaultHandler),
]
