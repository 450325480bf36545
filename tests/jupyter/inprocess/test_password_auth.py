"""A server with a password and no token: kernels get a private token only the lmserve routes accept."""
import json

import pytest
from jupyter_server.auth import passwd
from tornado.httpclient import HTTPClientError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"lmjupyter": True}},
            # PasswordIdentityProvider's own section wins over the IdentityProvider.token pytest-jupyter sets.
            "PasswordIdentityProvider": {"hashed_password": passwd("secret"), "token": ""},
            "LMServe": {"gpus": []}}


@pytest.fixture
def kernel_token(jp_serverapp):
    (app,) = jp_serverapp.extension_manager.extension_apps["lmjupyter"]
    assert jp_serverapp.identity_provider.token == ""
    assert app.kernel_token and app.kernel_credentials()[1] == app.kernel_token
    return app.kernel_token


async def test_the_kernel_token_opens_the_lmserve_routes(jp_fetch, kernel_token):
    auth = {"Authorization": f"token {kernel_token}"}
    health = await jp_fetch("lmserve", "api", "health", headers=auth)
    assert json.loads(health.body)["status"] == "ok"
    body = json.dumps({"name": "m", "handler": "lmjupyter.handlers.base:BaseHandler", "dry_run": True,
                       "config": {"deviceType": "cpu"}})
    planned = await jp_fetch("lmserve", "api", "models", method="POST", body=body, headers=auth)
    assert json.loads(planned.body)["dry_run"] is True  # token-authenticated: no XSRF token needed


async def test_the_kernel_token_opens_nothing_else(jp_fetch, kernel_token):
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("api", "contents", headers={"Authorization": f"token {kernel_token}"})
    assert refused.value.code == 403
    for auth in ("", "token wrong"):
        with pytest.raises(HTTPClientError) as refused:
            await jp_fetch("lmserve", "api", "health", headers={"Authorization": auth})
        assert refused.value.code == 403
