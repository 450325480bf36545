"""Part 6 of issue 13, ``lmjupyter serve``: every route the application mounts refuses calls without
the token (read from the mounted route table, so new routes are covered on their own); the token is
compared in constant time; the runtime file is the user's alone. (The Jupyter extension's half is
tests/jupyter/inprocess/test_auth_table.py.)"""
import inspect
import os
import stat

import pytest
import requests

from lmjupyter.server import fast_predict, standalone
from routes import mounted
from serverproc import ServerProcess

pytestmark = pytest.mark.timeout(120)
ROUTES = mounted(standalone.make_app(engine=None, token="unused"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(str(tmp_path_factory.mktemp("auth")), env={"XDG_RUNTIME_DIR": str(tmp_path_factory.mktemp("rt"))})
    yield proc
    proc.stop()


def test_the_table_holds_every_route_and_only_token_guarded_handlers():
    paths = {path for _, path, _ in ROUTES}
    assert {"/lmserve/api/health", "/lmserve/api/models", "/lmserve/api/models/x/predict", "/lmserve/metrics"} <= paths
    app = standalone.make_app(engine=None, token="unused")
    every = mounted(app)  # any RequestHandler at all, not only the token-guarded ones
    assert {(m, p) for m, p, _ in every} == {(m, p) for m, p, _ in ROUTES}
    assert all(issubclass(cls, standalone.TokenAuthHandler) for _, _, cls in every)


@pytest.mark.parametrize("method,path", sorted({(m, p) for m, p, _ in ROUTES}))
@pytest.mark.parametrize("auth", [{}, {"Authorization": "token wrong"}, {"Authorization": "Bearer wrong"},
                                  {"Authorization": "Basic dGVzdC10b2tlbjp4"}, {"Authorization": "token "},
                                  "?token=wrong"])
def test_every_mounted_route_refuses_a_missing_or_wrong_token(server, method, path, auth):
    url = server.url.rstrip("/") + path + (auth if isinstance(auth, str) else "")
    headers = auth if isinstance(auth, dict) else {}
    response = requests.request(method, url, headers=headers, data=b'{"workers": 1}', timeout=30)
    assert response.status_code == 401, (method, path, response.status_code, response.text[:200])
    if method != "HEAD":
        assert "token" in response.json()["error"]["message"]
    # the right token opens it (the route exists: not a 401 because nothing is there)
    ok = requests.request(method, server.url.rstrip("/") + path, data=b'{"workers": 1}', timeout=30,
                          headers={"Authorization": f"token {server.token}"})
    assert ok.status_code != 401


def test_the_token_is_compared_in_constant_time():
    """Both checks (the route table's and the fast predict path's) use hmac.compare_digest;
    an ``==`` on secrets leaks their prefix through timing."""
    for check in (standalone.TokenAuthHandler.prepare, fast_predict._token_ok):
        source = inspect.getsource(check)
        assert "hmac.compare_digest(" in source and "== expected" not in source, check


def test_the_runtime_file_and_its_folder_are_the_users_alone(server):
    runtime = os.path.join(server_env(server), "lmjupyter", "runtime")
    files = os.listdir(runtime)
    assert files, runtime
    assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o700
    for name in files:
        assert stat.S_IMODE(os.stat(os.path.join(runtime, name)).st_mode) == 0o600


def server_env(server) -> str:
    with open(f"/proc/{server.proc.pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return env[b"XDG_RUNTIME_DIR"].decode()
