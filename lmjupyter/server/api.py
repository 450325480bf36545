"""The REST routes of DESIGN.md, written once for both servers.

Each handler here is a mixin over an unspecified Tornado ``RequestHandler``
base: :func:`route_table` joins them with the base a server chooses (token auth
for ``lmjupyter serve``, Jupyter's ``APIHandler`` in the extension). The engine
is found in ``self.settings["lmserve_engine"]``.
"""
from __future__ import annotations

import asyncio
import functools
import json
import time

from tornado.iostream import StreamClosedError

import lmjupyter
from lmjupyter.compat.torchserve.meta import request_meta
from lmjupyter.engine.request import END_OF_STREAM, RequestFailed
from lmjupyter.errors import ApiError
from lmjupyter.lab import loop_name
from lmjupyter.server.limits import DEFAULT_CLIENT_TIMEOUT, StreamedBody
from lmjupyter.server.openai.routes import ROUTES as OPENAI_ROUTES

API = "lmserve/api"
JSON_TYPE = "application/json"
STREAM_VALUES = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def api_errors(method):
    """Turn refusals into JSON errors with the right status; never an HTML page."""
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        if not self.join_body():
            self.refuse_oversize(None)
            return
        try:
            return await method(self, *args, **kwargs)
        except ApiError as exc:
            self.send_error_json(exc.status, exc.to_dict())
        except RequestFailed as exc:
            self.send_error_json(exc.status, {"error": {"message": str(exc), **exc.detail}})
    return wrapper


class ApiMixin(StreamedBody):
    """What every route shares: the engine, JSON in, JSON out, a bounded body."""

    @property
    def engine(self):
        return self.settings["lmserve_engine"]

    async def prepare(self):
        """The server's auth first; then an announced body over the limit is refused before it is read."""
        result = super().prepare()
        if result is not None:
            await result
        if not self._finished and self.announced_too_large():
            self.refuse_oversize(int(self.request.headers["Content-Length"]))

    def refuse_oversize(self, size: int | None) -> None:
        self.set_header("Connection", "close")  # the rest of the body is not read
        self.send_error_json(413, {"error": {"message": self.oversize_message(size)}})

    def json_body(self):
        if not self.request.body:
            return {}
        try:
            return json.loads(self.request.body)
        except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
            raise ApiError(400, f"request body is not valid JSON: {type(exc).__name__}: {exc}") from None

    def send_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(json.dumps(data))

    def send_error_json(self, status: int, data: dict) -> None:
        if self._finished:
            return
        self.clear()
        self.send_json(data, status)

    def write_error(self, status_code: int, **kwargs) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if exc is not None and status_code >= 500:
            message = f"{type(exc).__name__}: {exc}"
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(json.dumps({"error": {"message": message}}))

    def check_xsrf_cookie(self):
        """REST clients authenticate with a token header, so XSRF cookies do not apply."""
        return


class HealthHandler(ApiMixin):
    @api_errors
    async def get(self):
        health = {"status": "ok", "version": lmjupyter.__version__, "loop": loop_name(),
                  "launcher": self.engine.launcher.describe()}
        spares = self.engine.describe_spares()
        if spares is not None:  # lmjupyter serve --warm-spares N
            health["warm_spares"] = spares
        self.send_json(health)


class ModelsHandler(ApiMixin):
    @api_errors
    async def get(self):
        self.send_json({"models": [self.engine.describe_model(m) for m in self.engine.models()],
                        "restore_errors": self.engine.restore_errors})

    @api_errors
    async def post(self):
        result = await self.engine.deploy(self.json_body())
        self.send_json(result, 200 if result.get("dry_run") else 201)


class ModelHandler(ApiMixin):
    """``/models/{name}`` means the default version (DELETE: every version); ``/versions/{v}`` one version."""

    @api_errors
    async def get(self, name, version=None):
        self.send_json(self.engine.describe(name, version))

    @api_errors
    async def put(self, name, version=None):
        self.send_json(await self.engine.scale(name, self.json_body(), version))

    @api_errors
    async def delete(self, name, version=None):
        self.send_json(await self.engine.undeploy(name, version))


class DefaultVersionHandler(ApiMixin):
    @api_errors
    async def put(self, name, version):
        self.send_json(self.engine.set_default(name, version))


class LogsHandler(ApiMixin):
    @api_errors
    async def get(self, name, version=None):
        rank = self.get_argument("rank", None)
        tail = self.get_argument("tail", "100")
        try:
            rank_number = int(rank) if rank is not None else None
            lines = max(1, min(int(tail), 10_000))
        except ValueError:
            raise ApiError(400, "rank and tail must be integers") from None
        self.send_json({"logs": self.engine.logs(name, rank_number, lines, version)})


class EventsHandler(ApiMixin):
    """Start-up events after ``?after=SEQ``: worker starts and each rank's phases, in order."""

    @api_errors
    async def get(self, name, version=None):
        try:
            after = int(self.get_argument("after", "0"))
        except ValueError:
            raise ApiError(400, "after must be an integer (the last seq seen)", key="after") from None
        self.send_json(self.engine.events(name, after, version))


class GpusHandler(ApiMixin):
    @api_errors
    async def get(self):
        self.send_json({"gpus": self.engine.describe_gpus()})


class MetricsHandler(ApiMixin):
    @api_errors
    async def get(self):
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.engine.metrics.exposition())


class PredictHandler(ApiMixin):
    """One request in, one answer out; ``?stream=1`` sends partial results as NDJSON lines."""

    _pending = None
    execute_verbs = ("post",)  # Jupyter's authorizer sees these as "execute" on resource lmserve

    @api_errors
    async def post(self, name, version=None):
        model = self.engine.model(name, version)
        started = time.perf_counter()
        stream = STREAM_VALUES.get(self.get_argument("stream", "0"))
        if stream is None:
            raise ApiError(400, f"stream = {self.get_argument('stream')!r}: expected 1 or 0", key="stream")
        content_type = self.request.headers.get("Content-Type", JSON_TYPE)
        status = 500
        try:
            meta = request_meta(self.request) if model.request_meta else None  # TorchServe-style handlers
            self._pending = request = model.submit(self.request.body, content_type, stream, meta)
            if stream:
                status = await self._stream(request)
            else:
                status, answer_type, body = (await request.future)[:3]
                self.set_status(status)
                self.set_header("Content-Type", answer_type)
                self.finish(body)
        except RequestFailed as exc:
            status = exc.status
            raise
        finally:
            model.metrics.answered(status, time.perf_counter() - started)

    async def _stream(self, request) -> int:
        self.set_header("Content-Type", "application/x-ndjson")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            stall = self.settings.get("lmserve_client_timeout", DEFAULT_CLIENT_TIMEOUT)
            ended = False
            while not ended:
                # everything that has arrived goes out in one write: under load a flush per
                # token would cost more server time than the tokens themselves
                for partial in await drain(request.partials):
                    if partial is END_OF_STREAM:
                        ended = True
                        break
                    self.write(_ndjson_line("partial", partial))
                if ended:
                    break
                try:  # a client that stopped reading must not hold its request (and our memory) forever
                    await asyncio.wait_for(asyncio.shield(self.flush()), stall)
                except asyncio.TimeoutError:
                    request.cancelled = True
                    self.request.connection.close()
                    return 408
            try:
                answer = request.future.result()
                line, status = _ndjson_line("result", answer), answer[0]
            except RequestFailed as exc:
                line = json.dumps({"error": {"message": str(exc), "status": exc.status, **exc.detail}}).encode() + b"\n"
                status = exc.status
            self.finish(line)
            return status
        except StreamClosedError:
            request.cancelled = True
            return 499

    def on_connection_close(self):
        """A client that goes away cancels its request; the worker is not disturbed."""
        super().on_connection_close()  # a body still arriving ends too (else the handler waits forever)
        if self._pending is not None:
            self._pending.cancelled = True


async def drain(queue) -> list:
    """The next item of an asyncio queue (waiting for it), and every item already behind it."""
    items = [await queue.get()]
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def _ndjson_line(kind: str, answer) -> bytes:
    status, content_type, body = answer[:3]
    if status >= 400:
        return body + b"\n"  # already {"error": {...}}
    if content_type.startswith(JSON_TYPE):
        return b'{"' + kind.encode() + b'": ' + body + b"}\n"
    return json.dumps({kind: body.decode("utf-8", "replace")}).encode() + b"\n"


ROUTES = [
    (rf"{API}/health", HealthHandler),
    (rf"{API}/models", ModelsHandler),
    (rf"{API}/models/([^/]+)", ModelHandler),
    (rf"{API}/models/([^/]+)/predict", PredictHandler),
    (rf"{API}/models/([^/]+)/logs", LogsHandler),
    (rf"{API}/models/([^/]+)/events", EventsHandler),
    (rf"{API}/models/([^/]+)/versions/([^/]+)", ModelHandler),
    (rf"{API}/models/([^/]+)/versions/([^/]+)/predict", PredictHandler),
    (rf"{API}/models/([^/]+)/versions/([^/]+)/logs", LogsHandler),
    (rf"{API}/models/([^/]+)/versions/([^/]+)/events", EventsHandler),
    (rf"{API}/models/([^/]+)/versions/([^/]+)/default", DefaultVersionHandler),
    (rf"{API}/gpus", GpusHandler),
    ("lmserve/metrics", MetricsHandler),
    *((f"lmserve/{pattern}", handler) for pattern, handler in OPENAI_ROUTES),  # OpenAI's API (server/openai/)
]


def _node_routes() -> list[tuple[str, type]]:
    """The node agents' routes (lmjupyter/nodes/api.py): its mixins joined with ApiMixin, verbs with api_errors."""
    from lmjupyter.nodes import api as nodes

    def joined(cls: type) -> type:
        verbs = {verb: api_errors(getattr(cls, verb)) for verb in ("get", "post", "put", "delete") if verb in vars(cls)}
        return type(cls.__name__, (cls, ApiMixin), verbs)

    return [(rf"{API}/nodes", joined(nodes.NodesHandler)), (rf"{API}/nodes/([^/]+)", joined(nodes.NodeHandler)),
            (rf"{API}/nodes/([^/]+)/commands", joined(nodes.NodeCommandsHandler)),
            (rf"{API}/nodes/([^/]+)/events", joined(nodes.NodeEventsHandler))]


ROUTES += _node_routes()


def all_routes(torchserve_prefix: str = "", openai_at_root: bool = False) -> list[tuple[str, type]]:
    """lmjupyter's routes, then TorchServe's (``/ping``, ``/predictions``, ``/models``) under ``torchserve_prefix``;
    ``openai_at_root``: OpenAI's ``/v1/...`` also at the root (lmjupyter serve), where OpenAI clients look for it."""
    from lmjupyter.compat.torchserve.rest import ROUTES as TORCHSERVE_ROUTES

    return (ROUTES + [(torchserve_prefix + pattern, mixin) for pattern, mixin in TORCHSERVE_ROUTES]
            + (OPENAI_ROUTES if openai_at_root else []))


class InFlight:
    """Joined under every route's mixins, above the server's base handler (``route_table``): counts the
    request in ``lmjupyter_http_requests_in_flight`` from ``prepare`` (before the server's auth) until
    ``on_finish`` or ``on_connection_close``, whichever comes first, once. A mixin that overrides
    ``on_connection_close`` without calling ``super()`` leaves its request counted (and, for a
    streamed-body route, its handler waiting for the body forever): the gauge shows such a leak."""

    _count_out = staticmethod(lambda: None)   # until prepare counts the request in

    def prepare(self):
        self._count_out = self.settings["lmserve_engine"].metrics.http_request_started()
        return super().prepare()  # None, or the awaitable of an async prepare (Jupyter's), for Tornado

    def on_finish(self):
        self._count_out()
        super().on_finish()

    def on_connection_close(self):
        self._count_out()
        super().on_connection_close()


def route_table(base_url: str, base_handler: type, wrap=lambda cls: cls,
                torchserve_prefix: str = "", openai_at_root: bool = False) -> list[tuple[str, type]]:
    """The routes joined with a server's base handler; ``wrap`` may add auth decorators.
    TorchServe's paths sit at the root of ``lmjupyter serve`` and under ``lmserve/`` in Jupyter."""
    base_url = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
    # _stream_request_body: Tornado hands the body over in chunks (limits.StreamedBody bounds it)
    return [(base_url + pattern, wrap(type(mixin.__name__, (mixin, InFlight, base_handler),
                                           {"_stream_request_body": issubclass(mixin, StreamedBody)})))
            for pattern, mixin in all_routes(torchserve_prefix, openai_at_root)]
