"""The agents' REST protocol on a real ``lmjupyter serve``: registration, the long poll as
heartbeat, refusals, and the per-node plan of GPU workers. The "agent" here is the test
speaking the protocol over real HTTP (the real agent runs in test_multihost.py)."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from serverproc import ServerProcess, handler_path, wait_until

pytestmark = pytest.mark.timeout(120)
TOKEN = "test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(str(tmp_path_factory.mktemp("nodes")), "--gpus", "0,1,2,3", "--node-timeout", "2")
    yield proc
    proc.stop()


def call(server, method: str, path: str, token: str | None = TOKEN, **kwargs) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.request(method, server.url + "lmserve/api/" + path, headers=headers, timeout=30, **kwargs)


def register(server, name: str, **body) -> dict:
    response = call(server, "POST", "nodes", json={"name": name, "address": "127.0.0.1", "instance": name, **body})
    assert response.status_code == 201, response.text
    return response.json()


def node(server, name: str) -> dict | None:
    return next((n for n in call(server, "GET", "nodes").json()["nodes"] if n["name"] == name), None)


def keep_polling(server, name: str, session: str, stop: threading.Event) -> threading.Thread:
    def loop():
        while not stop.is_set():
            call(server, "POST", f"nodes/{name}/commands", json={"session": session, "wait": 0.5})
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_every_node_route_needs_the_token(server):
    for method, path in (("GET", "nodes"), ("POST", "nodes"), ("POST", "nodes/x/commands"),
                         ("POST", "nodes/x/events"), ("DELETE", "nodes/x"), ("GET", "nodes/x")):
        assert call(server, method, path, token=None).status_code == 401, path
        assert call(server, method, path, token="wrong").status_code == 401, path


def test_bad_registrations_are_refused_naming_the_key(server):
    local = next(n for n in call(server, "GET", "nodes").json()["nodes"] if n["local"])
    cases = [({"name": "no spaces"}, 400, "name"), ({"name": "b", "address": "not-an-ip"}, 400, "address"),
             ({"name": "b", "gpus": [0, 0]}, 400, "gpus"), ({"name": "b", "colour": 1}, 400, "colour"),
             ({"name": local["name"]}, 409, "name"),
             ({"name": "b", "address": "10.1.2.3"}, 400, "address")]  # this server listens on 127.0.0.1 only
    for body, status, key in cases:
        response = call(server, "POST", "nodes", json=body)
        assert (response.status_code, response.json()["error"]["key"]) == (status, key), body
    assert node(server, "b") is None


def test_quiet_agent_is_lost_after_the_timeout_and_a_dropped_poll_at_once(server):
    quiet = register(server, "quiet")
    assert node(server, "quiet")["state"] == "online"
    wait_until(lambda: node(server, "quiet")["state"] == "lost", 8, message="the quiet agent lost")
    assert "no heartbeat" in node(server, "quiet")["lost_reason"]
    stale = call(server, "POST", "nodes/quiet/commands", json={"session": quiet["session"], "wait": 0})
    assert stale.status_code == 404 and "register again" in stale.json()["error"]["message"]

    dropped = register(server, "dropped")
    with pytest.raises(requests.Timeout):  # the agent hangs up mid-poll (as when it is killed)
        requests.post(server.url + "lmserve/api/nodes/dropped/commands", headers={"Authorization": f"token {TOKEN}"},
                      json={"session": dropped["session"], "wait": 20}, timeout=0.5)
    hung_up = time.monotonic()
    wait_until(lambda: node(server, "dropped")["state"] == "lost", 5, message="the hung-up agent lost")
    assert time.monotonic() - hung_up < 1.9  # sooner than the 2 s heartbeat timeout
    assert node(server, "dropped")["lost_reason"] == "its connection to the server closed"


def test_a_pending_poll_is_a_heartbeat_and_names_are_unique(server):
    agent = register(server, "poller", gpus=[0, 1])
    started = time.monotonic()
    answer = call(server, "POST", "nodes/poller/commands", json={"session": agent["session"], "wait": 3})
    assert answer.json() == {"commands": []} and time.monotonic() - started >= 2.9
    assert node(server, "poller")["state"] == "online"  # 3 s of waiting outlasted the 2 s timeout
    assert [g for g in call(server, "GET", "gpus").json()["gpus"] if g["node"] == "poller"] == [
        {"id": 0, "holder": None, "node": "poller"}, {"id": 1, "holder": None, "node": "poller"}]
    other = call(server, "POST", "nodes", json={"name": "poller", "address": "127.0.0.1", "instance": "another"})
    assert other.status_code == 409 and "already registered" in other.json()["error"]["message"]
    left = call(server, "DELETE", "nodes/poller", params={"session": agent["session"]})
    assert left.status_code == 200 and node(server, "poller") is None


def test_gpu_workers_plan_gpus_on_every_node_and_refuse_when_an_agent_is_full(server):
    agent = register(server, "gpunode", gpus=[0, 1], address="127.0.0.2")
    stop = threading.Event()
    poller = keep_polling(server, "gpunode", agent["session"], stop)
    try:
        config = {"deviceType": "gpu", "torchrun": {"nproc-per-node": 2, "nnodes": 2}}
        body = {"name": "big", "handler": handler_path("echo.py"), "config": config, "dry_run": True}
        plan = call(server, "POST", "models", json=body).json()["plan"]
        nodes = plan["workers"][0]["nodes"]
        assert [(n["node_rank"], n["node"], n["devices"], n["env"]["CUDA_VISIBLE_DEVICES"]) for n in nodes] == [
            (0, nodes[0]["node"], "0,1", "0,1"), (1, "gpunode", "0,1", "0,1")]
        assert "--local-addr 127.0.0.2" in " ".join(nodes[1]["command"])
        refused = call(server, "POST", "models", json={**body, "workers": 2})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["key"] == "torchrun.nnodes"
        assert "big worker 2 needs 2 nodes" in error["message"]
        assert "gpunode (127.0.0.2): big worker 2 needs 2 GPU(s) but only 0 of [0, 1] are free" in error["message"]
        reserved = call(server, "POST", "models", json={**body, "config": {
            **config, "torchrun": {**config["torchrun"], "rdzv-endpoint": "1.2.3.4:5"}}})
        assert reserved.status_code == 400 and reserved.json()["error"]["key"] == "torchrun.rdzv-endpoint"
    finally:
        stop.set()
        poller.join(5)
