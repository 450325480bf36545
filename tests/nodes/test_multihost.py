"""One worker group across two hosts: the server in one network namespace, ``lmjupyter node`` in another.

Real processes throughout: ``lmjupyter serve --host 10.231.0.1`` in host A, ``lmjupyter node``
in host B, torchrun's c10d rendezvous between them over the veth pair, gloo, the tiny Llama
split by tp and by pp. The test's HTTP client runs on threads inside host A (twohosts.HostPair.in_a).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from lmjupyter.client import LMServeError
from serverproc import handler_path, wait_until
from twohosts import ADDRESS_A, ADDRESS_B, AGENT, two_hosts

NODE_TIMEOUT = 4  # s without a heartbeat before a host counts as cut off (the default is 10)
PROMPTS = ["Hello", {"prompt": "The quick brown fox jumps over", "max_new_tokens": 5}]
MAX_NEW_TOKENS = 6

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    with two_hosts(tmp_path_factory.mktemp("multihost"), server_args=("--node-timeout", str(NODE_TIMEOUT))) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def llama(hosts):
    """The tiny Llama (in the server's folder) and its greedy tokens from one process (transformers' generate)."""
    from lmjupyter.models.tiny import build_tiny_llama
    from parallel.ranks import hf_generate

    path = str(build_tiny_llama(hosts.root / "llama", num_layers=3, hidden=64, heads=4, kv_heads=2))
    batch = [p if isinstance(p, dict) else {"prompt": p, "max_new_tokens": MAX_NEW_TOKENS} for p in PROMPTS]
    return path, hf_generate(path, batch)


def cpu(**torchrun) -> dict:
    return {"deviceType": "cpu", "startupTimeout": 90, "torchrun": {"nproc-per-node": 1, **torchrun}}


def _no_ranks_left(hosts) -> None:
    wait_until(lambda: not hosts.others(hosts.pair.a) and not hosts.others(hosts.pair.b), 15,
               message="no torchrun or rank process left in either namespace")


def _undeploy_leaves_nothing(hosts, name: str) -> None:
    """DELETE answers once every process of the model has ended, on both hosts."""
    hosts.call("undeploy", name)
    left = {ns: hosts.others(ns) for ns in (hosts.pair.a, hosts.pair.b)}
    assert left == {hosts.pair.a: set(), hosts.pair.b: set()}, left


def _busy(hosts, name: str) -> None:
    """Wait until the request sent last is on the worker (not in the queue)."""
    wait_until(lambda: hosts.call("describe", name)["workers"][0]["state"] == "busy", 20,
               message="the request on both ranks")


def _fails_fast(hosts, in_flight, within: float, since: float) -> str:
    with pytest.raises(LMServeError) as failed:
        in_flight.result(within + 20)
    assert time.monotonic() - since < within
    assert failed.value.status == 502
    return failed.value.message


def _serving_again(hosts, name: str) -> None:
    wait_until(lambda: hosts.call("describe", name)["workers"][0]["state"] == "ready", 90,
               message="the worker back on both hosts")
    assert hosts.call("predict", name, {"n": 3})["world_size"] == 2


def test_dry_run_lists_each_node_and_too_many_nodes_is_400(hosts):
    local = next(n for n in hosts.call("nodes") if n["local"])
    agent = next(n for n in hosts.call("nodes") if not n["local"])
    assert (local["address"], agent["name"], agent["address"], agent["state"]) == (ADDRESS_A, AGENT, ADDRESS_B,
                                                                                    "online")
    plan = hosts.call("deploy", "planned", handler_path("echo.py"), config=cpu(nnodes=2), dry_run=True)
    nodes = plan["plan"]["workers"][0]["nodes"]
    assert [(n["node_rank"], n["node"], n["address"]) for n in nodes] == [(0, local["name"], ADDRESS_A),
                                                                           (1, AGENT, ADDRESS_B)]
    node0, node1 = (" ".join(n["command"]) for n in nodes)
    for command, rank, is_host, address in ((node0, 0, 1, ADDRESS_A), (node1, 1, 0, ADDRESS_B)):
        assert "--nnodes 2 --nproc-per-node 1" in command
        assert f"--node-rank {rank} --rdzv-backend c10d --rdzv-endpoint {ADDRESS_A}:PORT" in command
        assert f"is_host={is_host}" in command and f"--local-addr {address}" in command
    assert not hosts.others(hosts.pair.a) and not hosts.others(hosts.pair.b)  # a plan starts nothing

    with pytest.raises(LMServeError) as refused:
        hosts.call("deploy", "three", handler_path("echo.py"), config=cpu(nnodes=3), wait=True)
    assert refused.value.status == 400
    assert refused.value.detail["key"] == "torchrun.nnodes"
    assert "needs 3 nodes" in refused.value.message and "missing: 1 node" in refused.value.message
    assert hosts.call("list") == []


@pytest.mark.parametrize("mode", ["tp", "pp"])
def test_llama_split_across_two_hosts_answers_like_one_process(hosts, llama, mode):
    model_dir, reference = llama
    name = f"llama-{mode}"
    config = {**cpu(nnodes=2), "parallelType": mode, "batchSize": 1, "handler": {"max_new_tokens": MAX_NEW_TOKENS}}
    described = hosts.call("deploy", name, model_dir=model_dir, config=config, wait=True)
    assert described["state"] == "ready", hosts.logs()
    ranks = described["workers"][0]["ranks"]
    assert [(r["rank"], r["node"], r["address"], r["device"]) for r in ranks] == [
        (0, next(n["name"] for n in hosts.call("nodes") if n["local"]), ADDRESS_A, "cpu"), (1, AGENT, ADDRESS_B, "cpu")]
    assert ranks[0]["pid"] in hosts.pair.pids(hosts.pair.a) and ranks[1]["pid"] in hosts.pair.pids(hosts.pair.b)

    answers = [hosts.call("predict", name, p) for p in PROMPTS]
    assert [a["token_ids"] for a in answers] == reference

    # rank 1's log is written on host B and mirrored to the server
    assert wait_until(lambda: any("ready" in line for entry in hosts.call("logs", name, rank=1)
                                  for line in entry["lines"]), 10, message="rank 1's log on the server")
    if mode == "tp":  # everything lmjupyter listens on is bound to the configured address
        listening = subprocess.run(["ip", "netns", "exec", hosts.pair.a, "ss", "-ltnpH"], capture_output=True,
                                   text=True, timeout=20).stdout
        own = [line.split()[3] for line in listening.splitlines() if f"pid={hosts.server.pid}," in line]
        assert len(own) >= 2 and all(address.startswith(f"{ADDRESS_A}:") for address in own), listening

    _undeploy_leaves_nothing(hosts, name)


def test_agent_killed_mid_request_fails_it_reports_the_node_and_serves_again(hosts):
    name = "echo-2h"
    hosts.call("deploy", name, handler_path("echo.py"), config=cpu(nnodes=2), wait=True)
    assert hosts.call("predict", name, {"n": 1})["world_size"] == 2
    in_flight = hosts.pair.in_a(hosts.client.predict, name, {"sleep": 60})
    _busy(hosts, name)
    on_b = hosts.others(hosts.pair.b)
    assert len(on_b) == 2  # torchrun and its rank
    killed_at = time.monotonic()
    os.kill(hosts.agent.pid, signal.SIGKILL)
    hosts.agent.wait()
    with pytest.raises(LMServeError) as failed:
        in_flight.result(30)
    assert time.monotonic() - killed_at < 5
    assert failed.value.status == 502 and AGENT in failed.value.message
    wait_until(lambda: not hosts.others(hosts.pair.b), 10, message="the agent's ranks end with it")

    def missing_node_reported():
        worker = hosts.call("describe", name)["workers"][0]
        return AGENT in (worker.get("waiting_for_nodes") or "") and "lost" in worker["waiting_for_nodes"]
    wait_until(missing_node_reported, 15, message="the model names the lost node")
    assert next(n for n in hosts.call("nodes") if n["name"] == AGENT)["state"] == "lost"

    hosts.start_agent()
    wait_until(lambda: hosts.call("describe", name)["workers"][0]["state"] == "ready", 90,
               message="the worker back on both hosts")
    assert hosts.call("predict", name, {"n": 2})["world_size"] == 2
    ranks = hosts.call("describe", name)["workers"][0]["ranks"]
    assert ranks[1]["node"] == AGENT and ranks[1]["pid"] in hosts.pair.pids(hosts.pair.b)

    _undeploy_leaves_nothing(hosts, name)


def test_rank_killed_host_cut_off_server_killed(hosts):
    """The other faults, one after the other on one deployment: a rank on host B killed -9, host B's
    link cut (no packet in or out, nothing closed), then the server killed -9 while the group
    restarts on both hosts: no process is left."""
    name = "faults"
    hosts.call("deploy", name, handler_path("echo.py"), config=cpu(nnodes=2), wait=True)

    rank_b = hosts.call("describe", name)["workers"][0]["ranks"][1]
    assert rank_b["node"] == AGENT
    in_flight = hosts.pair.in_a(hosts.client.predict, name, {"sleep": 60})
    _busy(hosts, name)
    killed_at = time.monotonic()
    os.kill(rank_b["pid"], signal.SIGKILL)
    message = _fails_fast(hosts, in_flight, 5, killed_at)
    assert f"rank 1 (pid {rank_b['pid']} on node {AGENT})" in message
    _serving_again(hosts, name)

    in_flight = hosts.pair.in_a(hosts.client.predict, name, {"sleep": 60})
    _busy(hosts, name)
    subprocess.run(["ip", "-n", hosts.pair.b, "link", "set", hosts.pair.veth_b, "down"], check=True, timeout=20)
    cut_at = time.monotonic()
    try:
        message = _fails_fast(hosts, in_flight, NODE_TIMEOUT + 5, cut_at)
        assert f"node {AGENT} ({ADDRESS_B}) was lost: no heartbeat for {NODE_TIMEOUT}s" in message
        # the agent, cut off from the server as long, ends its ranks by itself
        wait_until(lambda: not hosts.others(hosts.pair.b), NODE_TIMEOUT + 10, message="host B's ranks ended")
    finally:
        subprocess.run(["ip", "-n", hosts.pair.b, "link", "set", hosts.pair.veth_b, "up"], check=True, timeout=20)
    wait_until(lambda: next(n for n in hosts.call("nodes") if n["name"] == AGENT)["state"] == "online", 30,
               message="the agent registered again once its link was back")

    # the group restarts now that host B is back: the server dies in the middle of that
    os.kill(hosts.server.pid, signal.SIGKILL)
    hosts.server.wait()
    _no_ranks_left(hosts)
    assert hosts.agent.poll() is None  # the agent waits for the server to come back
