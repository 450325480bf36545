"""``lmjupyter serve``: the REST routes on their own Tornado server, behind a token.

The token comes from ``--token`` or ``LMJUPYTER_TOKEN``, else it is generated;
either way it is printed and written with the URL to a runtime file only the
user can read, so that clients on the same machine can find the server.
"""
from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import os
import secrets
import signal

import tornado.web
from tornado.log import access_log

from lmjupyter.engine.engine import Engine, EngineSettings
from lmjupyter.server import fast_predict
from lmjupyter.server.api import route_table
from lmjupyter.server.limits import DEFAULT_CLIENT_TIMEOUT, DEFAULT_MAX_BODY_SIZE


class ServeError(RuntimeError):
    """The server cannot start; the message is the one line ``lmjupyter serve`` prints."""


class TokenAuthHandler(tornado.web.RequestHandler):
    """Every verb of every route needs ``Authorization: token <T>`` (or ``Bearer``, or ``?token=``)."""

    def prepare(self):
        expected = self.settings["lmserve_token"]
        header = self.request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() not in ("token", "bearer"):
            given = self.get_query_argument("token", "")
        if not given or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            self.set_status(401)
            self.set_header("WWW-Authenticate", "token")
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(self.unauthorized_body("missing or wrong token: send 'Authorization: token <T>'")))

    def unauthorized_body(self, message: str) -> dict:
        """The 401's JSON; the OpenAI routes answer in OpenAI's shape."""
        return {"error": {"message": message}}


def make_app(engine: Engine, token: str, max_body_size: int = DEFAULT_MAX_BODY_SIZE,
             client_timeout: float = DEFAULT_CLIENT_TIMEOUT) -> tornado.web.Application:
    """The route table behind the token; plain predict requests take the fast path (fast_predict.py)."""
    return fast_predict.Application(route_table("/", TokenAuthHandler, openai_at_root=True),
                                    log_function=log_request,
                                    lmserve_engine=engine, lmserve_token=token,
                                    lmserve_max_body_size=max_body_size, lmserve_client_timeout=client_timeout)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log without a line per successful request unless DEBUG is on.

    Formatting and writing that line cost about 8% of the server's CPU under load (py-spy);
    failed requests (4xx, 5xx) are still logged as Tornado logs them.
    """
    status = handler.get_status()
    if status < 400:
        if not access_log.isEnabledFor(logging.DEBUG):
            return
        log = access_log.info
    else:
        log = access_log.warning if status < 500 else access_log.error
    log("%d %s %.2fms", status, handler._request_summary(), 1000.0 * handler.request.request_time())


def runtime_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".local", "share")
    path = os.path.join(base, "lmjupyter", "runtime")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def write_server_info(url: str, token: str, port: int) -> str:
    """A 0600 JSON file with the URL and token, removed when the server stops."""
    path = os.path.join(runtime_dir(), f"server-{port}.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token, "pid": os.getpid()}, f)
    return path


async def serve(host: str, port: int, token: str | None, settings: EngineSettings,
                announce=print, max_body_size: int = DEFAULT_MAX_BODY_SIZE,
                client_timeout: float = DEFAULT_CLIENT_TIMEOUT) -> None:
    """Run until SIGINT/SIGTERM, then end every worker group before returning.

    Raises :class:`ServeError` (nothing started, nothing left behind) when the port is taken
    or another server holds the model store.
    """
    token = token or os.environ.get("LMJUPYTER_TOKEN") or secrets.token_urlsafe(24)
    engine = Engine(settings)
    if engine.store.problem:
        await engine.shutdown()
        raise ServeError(engine.store.problem.split(";")[0])
    app = make_app(engine, token, max_body_size, client_timeout)
    try:
        # Tornado's own body limit stays out of the way: the routes stream bodies and answer 413
        # themselves (server/limits.py). The timeouts bound slow clients (slowloris).
        server = app.listen(port, address=host, xheaders=False, max_body_size=1 << 40,
                            idle_connection_timeout=client_timeout, body_timeout=client_timeout)
    except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0-65535
        await engine.shutdown()
        reason = "is in use (another server?); pick another with --port" \
            if getattr(exc, "errno", None) == errno.EADDRINUSE else f"cannot be used: {getattr(exc, 'strerror', None) or exc}"
        raise ServeError(f"port {port} on {host} {reason}") from None
    actual_port = next(iter(server._sockets.values())).getsockname()[1]
    url = f"http://{host}:{actual_port}/"
    info_file = write_server_info(url, token, actual_port)
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]  # uvloop or asyncio
    announce(f"lmjupyter serving at {url} (GPUs: {settings.gpus or 'none'}; event loop: {loop_name})\n"
             f"token: {token}\nserver info: {info_file}", flush=True)
    engine.start_launcher()  # the fork server imports torch now, before the first deploy needs it
    engine.start_spares()  # --warm-spares N: torchrun groups with torch imported, for the next deploys
    engine.restore()  # models of the store's registry snapshot come back in the background
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.stop()
        await engine.shutdown()
        try:
            os.unlink(info_file)
        except OSError:
            pass
