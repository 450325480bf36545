"""Part 6 of issue 13, the Jupyter extension: every lmserve route Jupyter mounts (read from its
route table, so routes other work adds are covered) refuses calls without credentials and cookie
calls without the XSRF token, and Jupyter's authorizer decides: a read-only user may list, not deploy.
Also the request body limit (part 3) inside Jupyter."""
import json
import os
import sys

import pytest
from jupyter_server.auth import Authorizer
from tornado.httpclient import HTTPClientError

from lmjupyter.jupyter_server_ext.handlers import LMServeHandler

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reliability"))
from routes import mounted  # noqa: E402

pytestmark = pytest.mark.timeout(120)


class ReadOnly(Authorizer):
    """A user who may read (list, describe, logs, metrics) and nothing else."""

    def is_authorized(self, handler, user, action, resource):
        return action == "read"


@pytest.fixture
def jp_server_config(request):
    config = {"ServerApp": {"jpserver_extensions": {"lmjupyter": True}}, "LMServe": {"gpus": []}}
    if "read_only" in request.node.name:
        config["ServerApp"]["authorizer_class"] = ReadOnly
    if "body_limit" in request.node.name:
        config["LMServe"]["max_body_size"] = 1 << 20
    return config


def lmserve_routes(jp_serverapp, jp_base_url):
    routes = mounted(jp_serverapp.web_app, LMServeHandler)
    assert len(routes) >= 16, routes
    return [(method, path.removeprefix(jp_base_url)) for method, path, _ in routes]


async def call(jp_fetch, method, path, headers):
    body = '{"workers": 1}' if method in ("POST", "PUT", "PATCH") else None
    try:
        return (await jp_fetch(*path.split("/"), method=method, body=body, headers=headers,
                               allow_nonstandard_methods=True)).code
    except HTTPClientError as exc:
        return exc.code


async def test_every_mounted_route_refuses_no_or_wrong_credentials_and_cookies_without_xsrf(
        jp_fetch, jp_serverapp, jp_base_url):
    login = await jp_fetch("lmserve", "api", "health")  # token auth sets Jupyter's login cookie
    cookie = "; ".join(c.split(";")[0] for c in login.headers.get_list("Set-Cookie"))
    for method, path in lmserve_routes(jp_serverapp, jp_base_url):
        if method == "OPTIONS":  # Jupyter's CORS preflight answers anyone, with no data
            preflight = await jp_fetch(*path.split("/"), method="OPTIONS", headers={"Authorization": ""})
            assert preflight.body == b"", (path, preflight.body[:100])
            continue
        for auth in ("", "token wrong-token", "Bearer wrong-token"):
            assert await call(jp_fetch, method, path, {"Authorization": auth}) == 403, (method, path, auth)
        if method not in ("GET", "HEAD", "OPTIONS"):  # a browser's cookie alone is not enough to change things
            assert await call(jp_fetch, method, path, {"Authorization": "", "Cookie": cookie}) == 403, (method, path)
        assert await call(jp_fetch, method, path, {}) != 403, (method, path)  # the test token opens it


async def test_a_read_only_user_may_list_but_not_deploy_scale_undeploy_or_predict(jp_fetch, jp_serverapp,
                                                                                  jp_base_url):
    assert isinstance(jp_serverapp.authorizer, ReadOnly)
    listed = await jp_fetch("lmserve", "api", "models")
    assert listed.code == 200 and json.loads(listed.body)["models"] == []
    for method, path, target in mounted(jp_serverapp.web_app, LMServeHandler):
        path = path.removeprefix(jp_base_url)
        code = await call(jp_fetch, method, path, {})
        reads = method in ("GET", "OPTIONS") and method.lower() not in getattr(target, "execute_verbs", ())
        if reads:  # TorchServe's GET /predictions is a predict: execute, refused like POST
            assert code != 403, (method, path, code)
        else:
            assert code == 403, (method, path, code)
    body = json.dumps({"name": "m", "handler": "lmjupyter.handlers.base:BaseHandler", "dry_run": True})
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("lmserve", "api", "models", method="POST", body=body)
    assert refused.value.code == 403


async def test_the_body_limit_holds_in_jupyter_too(jp_fetch):
    """c.LMServe.max_body_size: 413 naming the limit; a body within it is taken."""
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("lmserve", "api", "models", method="POST", body=b"x" * (2 << 20))
    assert refused.value.code == 413
    assert "1 MiB" in json.loads(refused.value.response.body)["error"]["message"]
    body = json.dumps({"name": "m", "handler": "lmjupyter.handlers.base:BaseHandler", "dry_run": True,
                       "config": {"deviceType": "cpu", "handler": {"pad": "p" * 500_000}}})
    planned = await jp_fetch("lmserve", "api", "models", method="POST", body=body)
    assert json.loads(planned.body)["dry_run"] is True


async def test_the_body_limit_holds_for_predict_in_jupyter_too(jp_fetch):
    """The fast predict path takes bodies within c.LMServe.max_body_size only; a larger one is
    the streaming route's 413, and the model keeps answering."""
    deploy = {"name": "echo", "handler": "lmjupyter.handlers.base:BaseHandler", "wait": True,
              "config": {"deviceType": "cpu", "minWorkers": 1, "maxWorkers": 1}}
    await jp_fetch("lmserve", "api", "models", method="POST", body=json.dumps(deploy))
    try:
        with pytest.raises(HTTPClientError) as refused:
            await jp_fetch("lmserve", "api", "models", "echo", "predict", method="POST",
                           body=json.dumps({"x": "x" * (2 << 20)}))
        assert refused.value.code == 413 and "1 MiB" in refused.value.response.body.decode()
        answer = await jp_fetch("lmserve", "api", "models", "echo", "predict", method="POST", body='{"x": 1}')
        assert json.loads(answer.body) == {"x": 1}
    finally:
        await jp_fetch("lmserve", "api", "models", "echo", method="DELETE")
