"""The REST contract: auth on every route, dry-run plans, refusals that name the key."""
import os
import shutil
import signal

import pytest
import requests

from lmjupyter.client import LMServeError
from serverproc import ServerProcess, alive, cpu_config, handler_path, rank_pids, wait_until

pytestmark = pytest.mark.timeout(120)
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "data", "examples")

ROUTES = [
    ("GET", "lmserve/api/health"), ("GET", "lmserve/api/models"), ("POST", "lmserve/api/models"),
    ("GET", "lmserve/api/models/x"), ("PUT", "lmserve/api/models/x"), ("DELETE", "lmserve/api/models/x"),
    ("POST", "lmserve/api/models/x/predict"), ("GET", "lmserve/api/models/x/logs"),
    ("GET", "lmserve/api/gpus"), ("GET", "lmserve/metrics"),
]


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory):
    """A server that believes it has 8 GPUs (--gpus), for planning only."""
    root = tmp_path_factory.mktemp("gpus")
    for name in ("device-ids-model-config.yaml", "pippy-model-config.yaml"):
        shutil.copy(os.path.join(EXAMPLES, name), root / name)
    proc = ServerProcess(str(root), "--gpus", "0,1,2,3,4,5,6,7")
    yield proc
    proc.stop()


@pytest.mark.parametrize("method,path", ROUTES)
@pytest.mark.parametrize("token", [None, "wrong"])
def test_every_route_needs_the_token(server, method, path, token):
    headers = {"Authorization": f"token {token}"} if token else {}
    response = requests.request(method, server.url + path, headers=headers, json={}, timeout=10)
    assert response.status_code == 401
    assert "token" in response.json()["error"]["message"]


def test_health_and_metrics(server):
    assert server.client.health()["status"] == "ok"
    assert "lmjupyter_requests" in server.client.metrics() or server.client.metrics() != ""


def test_seed_rule_device_ids_via_dry_run(gpu_server):
    plan = gpu_server.client.deploy("pinned", handler_path("echo.py"),
                                    config_file="device-ids-model-config.yaml", dry_run=True)["plan"]
    assert [w["devices"] for w in plan["workers"]] == ["2,3", "4,5"]
    assert "--nproc-per-node" in plan["workers"][0]["command"]
    assert gpu_server.client.list() == []


def test_seed_rule_eight_gpus_nproc_four(gpu_server):
    config = {"minWorkers": 2, "maxWorkers": 2, "deviceType": "gpu", "torchrun": {"nproc-per-node": 4}}
    plan = gpu_server.client.deploy("split", handler_path("echo.py"), config=config, dry_run=True)["plan"]
    assert [w["devices"] for w in plan["workers"]] == ["0,1,2,3", "4,5,6,7"]
    assert plan["workers"][1]["env"]["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"


def test_torchserve_pippy_config_plans_unchanged(gpu_server):
    result = gpu_server.client.deploy("pippy", handler_path("echo.py"),
                                      config_file="pippy-model-config.yaml", dry_run=True)
    assert result["plan"]["workers"][0]["devices"] == "0,1,2,3"
    assert result["config"]["pippy"]["chunks"] == 1


def test_over_asking_for_gpus_is_a_400(gpu_server):
    config = {"minWorkers": 3, "maxWorkers": 3, "deviceType": "gpu", "torchrun": {"nproc-per-node": 4}}
    with pytest.raises(LMServeError) as info:
        gpu_server.client.deploy("greedy", handler_path("echo.py"), config=config, dry_run=True)
    assert info.value.status == 400 and "needs 4 GPU(s)" in info.value.message
    assert info.value.detail["key"] == "torchrun.nproc-per-node"


@pytest.mark.parametrize("config,key", [
    ({"batchSize": "eight"}, "batchSize"),
    ({"deviceType": "tpu"}, "deviceType"),
    ({"minWorkers": 4, "maxWorkers": 2}, "maxWorkers"),
    ({"torchrun": {"nproc-per-node": -1}}, "torchrun.nproc-per-node"),
    ({"parallelType": "dp"}, "parallelType"),
    ({"responseTimeout": 0}, "responseTimeout"),
])
def test_malformed_configs_are_refused_and_nothing_is_deployed(server, config, key):
    with pytest.raises(LMServeError) as info:
        server.client.deploy("bad", handler_path("echo.py"), config=config, wait=True)
    assert info.value.status == 400
    assert info.value.detail["key"] == key and key in info.value.message
    assert server.client.list() == []


@pytest.mark.parametrize("body,key", [
    ({"handler": "x.py"}, "name"),
    ({"name": "a b", "handler": "x.py"}, "name"),
    ({"name": "ok"}, "handler"),
    ({"name": "ok", "handler": "/etc/passwd.py"}, "handler"),
    ({"name": "ok", "handler": "http://example.invalid/h.py"}, "handler"),
    ({"name": "ok", "handler": "echo.py", "wiat": True}, "wiat"),
])
def test_bad_deploy_bodies_name_the_key(server, body, key):
    response = requests.post(server.url + "lmserve/api/models", json=body,
                             headers={"Authorization": f"token {server.token}"}, timeout=10)
    assert response.status_code in (400, 403)
    assert response.json()["error"]["key"] == key


def test_unknown_model_is_404(server):
    with pytest.raises(LMServeError) as info:
        server.client.predict("nope", {})
    assert info.value.status == 404 and "nope" in info.value.message


def test_logs_show_each_rank(server):
    config = cpu_config(torchrun={"nproc-per-node": 2})
    server.client.deploy("logged", handler_path("echo.py"), config=config, wait=True)
    logs = server.client.logs("logged")
    assert [(entry["worker"], entry["rank"]) for entry in logs] == [(1, 0), (1, 1)]
    assert any("ready" in line for line in logs[1]["lines"])
    server.client.undeploy("logged")


def test_kill_9_of_the_server_leaves_no_worker_behind(tmp_path):
    proc = ServerProcess(str(tmp_path))
    try:
        config = cpu_config(minWorkers=2, maxWorkers=2, torchrun={"nproc-per-node": 2})
        pids = rank_pids(proc.client.deploy("orphans", handler_path("echo.py"), config=config, wait=True))
        assert len(pids) == 4
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(10)
        wait_until(lambda: not any(alive(p) for p in pids), 15, message="ranks to die with the server")
    finally:
        proc.stop()


def test_generated_token_is_printed_and_kept_in_a_private_file(tmp_path):
    import json
    import stat
    import subprocess
    import sys

    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    env.pop("LMJUPYTER_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "lmjupyter.cli", "serve", "--port", "0"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        token = lines[1].split("token:")[1].strip()
        info_file = lines[2].split("server info:")[1].strip()
        assert len(token) >= 24
        assert stat.S_IMODE(os.stat(info_file).st_mode) == 0o600
        info = json.load(open(info_file))
        assert info["token"] == token and info["url"].startswith("http://127.0.0.1:")
        ok = requests.get(info["url"] + "lmserve/api/health", headers={"Authorization": f"token {token}"}, timeout=10)
        assert ok.status_code == 200
    finally:
        proc.terminate()
        proc.wait(20)
    assert not os.path.exists(info_file)
