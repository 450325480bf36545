"""The fast predict path of ``lmjupyter serve`` (:mod:`lmjupyter.server.fast_predict`) inside Jupyter.

A plain ``POST <base_url>lmserve/api/models/{name}[/versions/{v}]/predict`` skips
Tornado's RequestHandler (and Jupyter's, which costs more: identity, authorizer,
CORS and activity bookkeeping on every call) only when Jupyter's own checks are
known to pass without running them:

- the server uses Jupyter's own IdentityProvider (token, or password plus token) and
  the allow-all Authorizer, so a request carrying the server's token is that user,
  allowed everything (any other provider or authorizer: every request goes the
  ordinary way, through ``@authenticated`` and ``@authorized``);
- the request carries ``Authorization: token|Bearer <the server's token>`` (or the
  kernels' token of a password-only server), no query string, no ``Origin`` header
  (browsers keep CORS and XSRF), a ``Host`` that Jupyter's ``check_host`` allows, and a
  ``Content-Length`` within ``c.LMServe.max_body_size`` (chunked and oversize bodies take
  the streaming route, which answers 413 without keeping them).

Anything else, a wrong token included, falls through to the ordinary route table, so
its answer (403, 404, ...) is exactly Jupyter's. Like Jupyter's API handlers, a fast
call counts as API activity (``api_last_activity``, read by idle culling).
"""
from __future__ import annotations

import hmac
import ipaddress
import re
import time
from datetime import datetime, timezone

from jupyter_server.auth.authorizer import AllowAllAuthorizer
from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider
from tornado import httputil
from tornado.routing import AnyMatches, Router, Rule

from lmjupyter.errors import ApiError
from lmjupyter.server.api import API
from lmjupyter.server.fast_predict import FastPredict, small_enough

_AUTH = re.compile(r"(?:token|bearer)\s+(.+)", re.IGNORECASE)
_HOST = re.compile(r"^(.*?)(:\d+)?$")


class JupyterFastPredict(Router):
    """Put first in the web app's router: returns a fast delegate, or None to fall through."""

    def __init__(self, serverapp, engine, kernel_token: str | None):
        self.serverapp, self.engine, self.kernel_token = serverapp, engine, kernel_token
        base = "/" + serverapp.base_url.strip("/") + "/" if serverapp.base_url.strip("/") else "/"
        self.path = re.compile(rf"^{re.escape(base)}{API}/models/([^/%]+)(?:/versions/([^/%]+))?/predict$")
        self.settings = serverapp.web_app.settings
        self._activity_at = 0.0

    def find_handler(self, request: httputil.HTTPServerRequest, **kwargs) -> httputil.HTTPMessageDelegate | None:
        if (request.method != "POST" or request.query or "Origin" in request.headers
                or not small_enough(request, self.settings)):
            return None
        match = self.path.match(request.path)
        if match is None or not self._token_ok(request.headers) or not self._host_ok(request):
            return None
        try:
            model = self.engine.model(*match.groups())
        except ApiError:
            return None  # the ordinary handler answers with the same 404
        self._count_activity()
        return FastPredict(request, model, self.engine.metrics)

    def _token_ok(self, headers: httputil.HTTPHeaders) -> bool:
        if not self._plain_auth():
            return False
        match = _AUTH.match(headers.get("Authorization", ""))
        if match is None:
            return False
        given = match.group(1).strip().encode()
        tokens = [t for t in (self.serverapp.identity_provider.token, self.kernel_token) if t]
        return any(hmac.compare_digest(given, t.encode()) for t in tokens)

    def _plain_auth(self) -> bool:
        """Jupyter's stock identity provider and allow-all authorizer (checked per call: cheap, and right
        even if an extension swaps them after start-up)."""
        app = self.serverapp
        return (type(app.identity_provider) in (IdentityProvider, PasswordIdentityProvider)
                and type(app.authorizer) is AllowAllAuthorizer)

    def _host_ok(self, request: httputil.HTTPServerRequest) -> bool:
        """Jupyter's ``check_host`` (DNS-rebinding protection), for the hosts it allows; a unix socket or
        an unusual host goes the ordinary way."""
        if self.settings.get("allow_remote_access", False):
            return True
        host = _HOST.match(request.host).group(1)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host in self.settings.get("local_hostnames", ["localhost"])

    def _count_activity(self) -> None:
        now = time.monotonic()
        if now - self._activity_at > 1.0:  # a datetime per call is needless; culling counts minutes
            self._activity_at = now
            self.settings["api_last_activity"] = datetime.now(timezone.utc)  # as jupyter_server's utcnow()


def install(serverapp, engine, kernel_token: str | None) -> JupyterFastPredict:
    """Make the fast path the first rule of the Jupyter web app's router."""
    router = JupyterFastPredict(serverapp, engine, kernel_token)
    serverapp.web_app.default_router.rules.insert(0, Rule(AnyMatches(), router))
    return router
