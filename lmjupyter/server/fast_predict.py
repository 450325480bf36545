"""The predict route of ``lmjupyter serve`` without Tornado's RequestHandler machinery.

A RequestHandler costs about 40 us of server CPU per request on the 2-core machines
(object set-up, default headers, the coroutine and task that run ``post``, flush):
a quarter of what Tornado spends on a request (benchmarks/RESULTS.md). For a plain
``POST /lmserve/api/models/{name}[/versions/{v}]/predict`` with a valid token and a
deployed model, :class:`Application` hands the request to :class:`FastPredict`, an
``HTTPMessageDelegate``: the body goes to ``model.submit`` and the answer is written
from the future's done-callback. Every other request (other routes, a query string
such as ``?stream=1`` or ``?token=``, a missing or wrong token, an unknown model, a
percent-encoded path) takes the ordinary route table, so its answers, errors included,
are those of :mod:`lmjupyter.server.api`. The Jupyter server extension keeps the
ordinary handlers (its auth is Jupyter's).
"""
from __future__ import annotations

import hmac
import json
import re
import time

import tornado
import tornado.web
from tornado import httputil
from tornado.iostream import StreamClosedError
from tornado.log import access_log

from lmjupyter.compat.torchserve.meta import request_meta
from lmjupyter.engine.request import RequestFailed
from lmjupyter.errors import ApiError
from lmjupyter.server.api import API, JSON_TYPE

PREDICT_PATH = re.compile(rf"^/{API}/models/([^/%]+)(?:/versions/([^/%]+))?/predict$")
SERVER_HEADER = f"TornadoServer/{tornado.version}"


class Application(tornado.web.Application):
    """The standalone server's application: the route table, plus the fast predict path."""

    def find_handler(self, request: httputil.HTTPServerRequest, **kwargs) -> httputil.HTTPMessageDelegate:
        if request.method == "POST" and not request.query and small_enough(request, self.settings):
            match = PREDICT_PATH.match(request.path)
            if match is not None and _token_ok(request.headers, self.settings["lmserve_token"]):
                engine = self.settings["lmserve_engine"]
                try:
                    model = engine.model(*match.groups())
                except ApiError:
                    pass  # the ordinary handler answers with the same 404
                else:
                    return FastPredict(request, model, engine.metrics)
        return super().find_handler(request, **kwargs)


def small_enough(request: httputil.HTTPServerRequest, settings: dict) -> bool:
    """A body of announced size within the limit; chunked and oversize bodies take the ordinary
    (streaming) route, which bounds what it keeps and answers 413."""
    try:
        return int(request.headers.get("Content-Length", "")) <= settings["lmserve_max_body_size"]
    except ValueError:
        return False


def _token_ok(headers: httputil.HTTPHeaders, expected: str) -> bool:
    """``TokenAuthHandler.prepare``'s header check (anything else goes the ordinary way)."""
    scheme, _, given = headers.get("Authorization", "").partition(" ")
    return (scheme.lower() in ("token", "bearer") and bool(given)
            and hmac.compare_digest(given.strip().encode(), expected.encode()))


class FastPredict(httputil.HTTPMessageDelegate):
    """One non-streamed predict request: what ``PredictHandler.post`` does, minus the handler."""

    def __init__(self, request: httputil.HTTPServerRequest, model, engine_metrics):
        self.request = request
        self.model = model
        self.pending = None
        self.started = time.perf_counter()
        self._chunks: list[bytes] = []
        self._count_out = engine_metrics.http_request_started()  # as api.InFlight counts the other routes
        request.connection.set_close_callback(self.on_connection_close)

    def headers_received(self, start_line, headers) -> None:
        return None

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def finish(self) -> None:
        body = self.request.body = b"".join(self._chunks)
        self._chunks = []
        try:
            meta = request_meta(self.request) if self.model.request_meta else None  # TorchServe-style handlers
            self.pending = self.model.submit(body, self.request.headers.get("Content-Type", JSON_TYPE), False, meta)
        except RequestFailed as exc:
            self._fail(exc)
            return
        except Exception as exc:  # as RequestHandler.write_error would: the type and message, 500
            self._respond(500, JSON_TYPE, json.dumps({"error": {"message": f"{type(exc).__name__}: {exc}"}}).encode())
            return
        self.pending.future.add_done_callback(self._answered)

    def _answered(self, future) -> None:
        try:
            answer = future.result()
        except RequestFailed as exc:
            self._fail(exc)
            return
        self._respond(answer[0], answer[1], answer[2])

    def _fail(self, exc: RequestFailed) -> None:
        self._respond(exc.status, JSON_TYPE, json.dumps({"error": {"message": str(exc), **exc.detail}}).encode())

    def _respond(self, status: int, content_type: str, body: bytes) -> None:
        connection = self.request.connection
        headers = httputil.HTTPHeaders()
        headers["Server"] = SERVER_HEADER
        headers["Content-Type"] = content_type
        headers["Date"] = _http_date()
        headers["Content-Length"] = str(len(body))
        try:
            connection.write_headers(httputil.ResponseStartLine("HTTP/1.1", status, httputil.responses.get(status, "Unknown")),
                                     headers, body)
            connection.finish()
        except StreamClosedError:
            pass
        self._count_out()
        self.model.metrics.answered(status, time.perf_counter() - self.started)
        if status >= 400:
            log = access_log.warning if status < 500 else access_log.error
            log("%d %s %s (%s) %.2fms", status, self.request.method, self.request.uri, self.request.remote_ip,
                1000.0 * self.request.request_time())

    def on_connection_close(self) -> None:
        """A client that goes away cancels its request; the worker is not disturbed. Called as the delegate
        (the client left mid-body) or as the close callback (it left waiting for the answer), or both."""
        self._count_out()
        if self.pending is not None:
            self.pending.cancelled = True


_date = (0, "")


def _http_date() -> str:
    """The Date header, formatted once a second rather than once a request."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, httputil.format_timestamp(now))
    return _date[1]
