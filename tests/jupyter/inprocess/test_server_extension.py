"""The server extension in a real (in-process) Jupyter server: auth, XSRF, routes, env export, shutdown.

Real torchrun workers (deviceType cpu, 2 gloo ranks) are started by the extension's engine.
"""
import asyncio
import binascii
import json
import os
import shutil
import time

import pytest

from lmjupyter.procs import pid_alive
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from lmjupyter.jupyter_server_ext import LMServe

pytestmark = pytest.mark.timeout(120)
HERE = os.path.dirname(__file__)
CPU = {"deviceType": "cpu", "torchrun": {"nproc-per-node": 2}}
ROUTES = [
    ("GET", "lmserve/api/health"), ("GET", "lmserve/api/models"), ("POST", "lmserve/api/models"),
    ("GET", "lmserve/api/models/x"), ("PUT", "lmserve/api/models/x"), ("DELETE", "lmserve/api/models/x"),
    ("POST", "lmserve/api/models/x/predict"), ("GET", "lmserve/api/models/x/logs"),
    ("GET", "lmserve/api/gpus"), ("GET", "lmserve/metrics"),
    # TorchServe's paths, under the extension's prefix
    ("GET", "lmserve/ping"), ("POST", "lmserve/predictions/x"), ("PUT", "lmserve/predictions/x/1"),
    ("GET", "lmserve/models"), ("POST", "lmserve/models"), ("GET", "lmserve/models/x"),
    ("PUT", "lmserve/models/x"), ("DELETE", "lmserve/models/x/1"), ("PUT", "lmserve/models/x/1/set-default"),
]


@pytest.fixture
def jp_server_config(tmp_path):
    store, extra = tmp_path / "store", tmp_path / "extra-root"
    extra.mkdir()
    return {"ServerApp": {"jpserver_extensions": {"lmjupyter": True}},
            "LMServe": {"gpus": [0, 1], "model_store": str(store), "allow_roots": [str(extra)]}}


@pytest.fixture
def extension(jp_serverapp) -> LMServe:
    (app,) = jp_serverapp.extension_manager.extension_apps["lmjupyter"]
    return app


@pytest.fixture
def handler_file(jp_root_dir):
    shutil.copy(os.path.join(HERE, "echo_stream.py"), jp_root_dir / "echo_stream.py")
    return "echo_stream.py"


async def _until_gone(pids, timeout=30.0):
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if pid_alive(p)]}"
        await asyncio.sleep(0.1)


def _pids(description):
    return [r["pid"] for w in description["workers"] for r in w["ranks"]]


async def _deploy(jp_fetch, handler_file, name="echo"):
    response = await jp_fetch("lmserve", "api", "models", method="POST", request_timeout=120,
                              body=json.dumps({"name": name, "handler": handler_file, "config": CPU, "wait": True}))
    assert response.code == 201
    return json.loads(response.body)


@pytest.mark.parametrize("method,path", ROUTES)
@pytest.mark.parametrize("auth", ["", "token wrong-token"])
async def test_every_route_refuses_unauthenticated_calls(jp_fetch, method, path, auth):
    body = "{}" if method in ("POST", "PUT") else None
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch(*path.split("/"), method=method, body=body, headers={"Authorization": auth},
                       allow_nonstandard_methods=True)
    assert refused.value.code == 403


async def test_routes_sit_under_the_base_url(jp_fetch, jp_base_url):
    response = await jp_fetch("lmserve", "api", "health")
    assert json.loads(response.body)["status"] == "ok"
    assert jp_base_url != "/"  # pytest-jupyter's base_url, so the join with it is exercised


async def test_traitlets_reach_the_engine(extension, jp_root_dir, tmp_path):
    engine = extension.engine
    assert engine.allocator.gpus == [0, 1]
    assert engine.root_dir == os.path.realpath(jp_root_dir)
    for root in (jp_root_dir, tmp_path / "store", tmp_path / "extra-root"):
        assert os.path.realpath(root) in engine.allowed_roots
    for trait in ("model_store", "gpus", "allow_roots", "fork_server", "preload", "warm_spares"):
        assert LMServe.class_traits()[trait].help
    assert engine.settings.fork_server is True and engine.launcher.kind == "fork-server"  # the default


async def test_gpu_plan_of_a_dry_run(jp_fetch, handler_file):
    response = await jp_fetch("lmserve", "api", "models", method="POST", body=json.dumps({
        "name": "planned", "handler": handler_file, "dry_run": True,
        "config": {"deviceType": "gpu", "torchrun": {"nproc-per-node": 2}}}))
    plan = json.loads(response.body)["plan"]
    assert [w["devices"] for w in plan["workers"]] == ["0,1"]


async def test_deploy_query_stream_metrics_undeploy(jp_fetch, handler_file):
    description = await _deploy(jp_fetch, handler_file)
    assert description["state"] == "ready" and len(_pids(description)) == 2

    answer = await jp_fetch("lmserve", "api", "models", "echo", "predict", method="POST", body='"hi"')
    assert answer.headers["Content-Type"].startswith("application/json")
    assert json.loads(answer.body) == {"echo": "hi"}

    # APIHandler would force application/json; the routes' own content types must survive.
    raw = await jp_fetch("lmserve", "api", "models", "echo", "predict", method="POST", body=b"\x00\x01",
                         headers={"Content-Type": "application/octet-stream"})
    assert raw.headers["Content-Type"] == "application/octet-stream" and raw.body == b"\x00\x01"
    streamed = await jp_fetch("lmserve", "api", "models", "echo", "predict", method="POST", body='"s"',
                              params={"stream": "1"})
    assert streamed.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in streamed.body.decode().splitlines()]
    assert lines == [{"partial": {"step": i}} for i in range(3)] + [{"result": {"echo": "s"}}]
    metrics = await jp_fetch("lmserve", "metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert b'lmjupyter_request_latency_seconds_bucket{le="0.005",model="echo"}' in metrics.body
    assert b"\nlmjupyter_http_requests_in_flight 1.0\n" in metrics.body  # the scrape itself: the predicts ended

    await jp_fetch("lmserve", "api", "models", "echo", method="DELETE", request_timeout=60)
    await _until_gone(_pids(description))


async def test_torchserve_paths_under_the_extension_prefix(jp_fetch, jp_root_dir):
    """TorchServe's inference and management paths at <base_url>lmserve/, behind Jupyter's auth."""
    (jp_root_dir / "ts_echo.py").write_text(
        "def handle(data, context):\n"
        "    return None if data is None else [row.get('body') for row in data]\n")
    response = await jp_fetch("lmserve", "api", "models", method="POST", request_timeout=120, body=json.dumps(
        {"name": "tsecho", "handler": "ts_echo.py", "config": {"deviceType": "cpu"}, "wait": True}))
    assert response.code == 201
    assert json.loads((await jp_fetch("lmserve", "ping")).body) == {"status": "Healthy"}
    listed = json.loads((await jp_fetch("lmserve", "models")).body)
    assert listed == {"models": [{"modelName": "tsecho", "modelUrl": "ts_echo.py"}]}
    answer = await jp_fetch("lmserve", "predictions", "tsecho", method="POST", body=b"raw words",
                            headers={"Content-Type": "text/plain"})
    assert answer.body == b"raw words" and answer.headers["x-request-id"]
    gone = await jp_fetch("lmserve", "models", "tsecho", method="DELETE", request_timeout=60)
    assert json.loads(gone.body) == {"status": 'Model "tsecho" unregistered'}


async def test_cookie_authenticated_calls_need_the_xsrf_token(jp_fetch, jp_serverapp, handler_file):
    """A browser (cookie) must send X-XSRFToken as JupyterLab does; token callers need not."""
    login = await jp_fetch("lmserve", "api", "health")  # token auth sets Jupyter's login cookie
    cookies = [c.split(";")[0] for c in login.headers.get_list("Set-Cookie")]
    assert any(c.startswith("username-") for c in cookies), cookies
    body = json.dumps({"name": "xsrf", "handler": handler_file, "dry_run": True, "config": CPU})
    cookie_only = {"Authorization": "", "Cookie": "; ".join(cookies)}

    read = await jp_fetch("lmserve", "api", "models", headers=cookie_only)  # GET needs no XSRF token
    assert read.code == 200
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("lmserve", "api", "models", method="POST", body=body, headers=cookie_only)
    assert refused.value.code == 403
    xsrf = binascii.hexlify(os.urandom(16)).decode()
    with_xsrf = {**cookie_only, "Cookie": cookie_only["Cookie"] + f"; _xsrf={xsrf}", "X-XSRFToken": xsrf}
    accepted = await jp_fetch("lmserve", "api", "models", method="POST", body=body, headers=with_xsrf)
    assert accepted.code == 200 and json.loads(accepted.body)["dry_run"] is True
    token_only = await jp_fetch("lmserve", "api", "models", method="POST", body=body)
    assert token_only.code == 200


async def test_kernels_get_the_url_and_token(extension, jp_serverapp, jp_fetch, jp_http_port, jp_base_url):
    # (jp_fetch: pytest-jupyter binds the HTTP server only for tests that use its client)
    before = {k: os.environ.get(k) for k in ("LMJUPYTER_URL", "LMJUPYTER_TOKEN", "LMJUPYTER_SERVER_PID")}
    await extension._start_jupyter_server_extension(jp_serverapp)  # what the server runs once it listens
    try:
        url, token = os.environ["LMJUPYTER_URL"], os.environ["LMJUPYTER_TOKEN"]
        assert url == f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
        assert token == jp_serverapp.identity_provider.token
        assert os.environ["LMJUPYTER_SERVER_PID"] == str(os.getpid())
        response = await AsyncHTTPClient().fetch(url + "lmserve/api/health",
                                                 headers={"Authorization": f"token {token}"})
        assert json.loads(response.body)["status"] == "ok"
    finally:
        await extension.stop_extension()
    assert {k: os.environ.get(k) for k in before} == before


async def test_stop_extension_ends_every_worker(jp_fetch, jp_serverapp, handler_file):
    first = await _deploy(jp_fetch, handler_file, "one")
    second = await _deploy(jp_fetch, handler_file, "two")
    pids = _pids(first) + _pids(second)
    assert len(pids) == 4 and all(pid_alive(p) for p in pids)
    launcher = json.loads((await jp_fetch("lmserve", "api", "health")).body)["launcher"]
    assert launcher["kind"] == "fork-server" and launcher["state"] == "ready" and launcher["forked"] == 2
    await jp_serverapp.extension_manager.stop_all_extensions()  # what server shutdown calls
    await _until_gone(pids + [launcher["pid"]], timeout=10)
