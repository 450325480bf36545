"""The base handler the shared REST mixins are joined with inside Jupyter.

Security, in one place:

- every verb is ``@tornado.web.authenticated`` and ``@authorized`` against the
  ``lmserve`` resource (read for GET, write for deploy/scale/undeploy,
  execute for predict, TorchServe's ``/predictions`` too), so custom Jupyter
  authorizers can restrict it;
- the mixins' ``check_xsrf_cookie`` is a no-op made for the token-only
  standalone server. Here Jupyter's own check is put back: token-authenticated
  calls (kernels, scripts) skip XSRF as Jupyter does for its own API, while a
  browser authenticated by cookie must send ``X-XSRFToken`` (JupyterLab's
  ServerConnection does);
- on a server with a password and no token, kernels get a private token that
  only these routes accept (see :class:`LMServeHandler.prepare`).
"""
from __future__ import annotations

import hmac
import re

import tornado.web
from jupyter_server.auth import authorized
from jupyter_server.auth.identity import User
from jupyter_server.base.handlers import APIHandler, JupyterHandler

AUTH_RESOURCE = "lmserve"
VERBS = ("get", "post", "put", "delete", "patch", "head")
_AUTH_HEADER = re.compile(r"(?:token|bearer)\s+(.+)", re.IGNORECASE)


class LMServeHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    async def prepare(self):
        self._accept_kernel_token()
        await super().prepare()
        # Before a streamed body is read (@authenticated runs after it); CORS preflights stay Jupyter's.
        if self.current_user is None and self.request.method != "OPTIONS":
            raise tornado.web.HTTPError(403)

    def _accept_kernel_token(self) -> None:
        """Password-only servers: accept the kernels' private token on these routes only.

        The identity provider returns an already-set ``_jupyter_current_user`` as is,
        and ``_token_authenticated`` makes Jupyter skip XSRF as for its own tokens.
        """
        expected = self.settings.get("lmserve_kernel_token")
        if not expected:
            return
        match = _AUTH_HEADER.match(self.request.headers.get("Authorization", ""))
        if match and hmac.compare_digest(match.group(1).strip().encode(), expected.encode()):
            self._jupyter_current_user = User(username="lmjupyter-kernel", name="lmjupyter kernel")
            self._token_authenticated = True

    def finish(self, *args, **kwargs):
        """APIHandler forces application/json; keep a type a route chose (metrics, bytes, NDJSON)."""
        chosen = self._headers.get("Content-Type", "")
        if chosen and not chosen.startswith("text/html"):  # text/html is Tornado's default, never ours
            kwargs.setdefault("set_content_type", chosen)
        return super().finish(*args, **kwargs)


def protect(cls: type) -> type:
    """``route_table``'s ``wrap``: Jupyter auth on every verb, and Jupyter's XSRF check back."""
    namespace = {"check_xsrf_cookie": JupyterHandler.check_xsrf_cookie, "__doc__": cls.__doc__}
    for verb in VERBS:
        method = getattr(cls, verb, None)
        if method is None or method is getattr(tornado.web.RequestHandler, verb):
            continue
        action = "execute" if verb in getattr(cls, "execute_verbs", ()) else None  # predict routes
        namespace[verb] = tornado.web.authenticated(authorized(action, resource=AUTH_RESOURCE)(method))
    return type(cls.__name__, (cls,), namespace)
