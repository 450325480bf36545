"""Which agents and GPUs a worker of several hosts takes, and what a refusal says."""
from lmjupyter.gpus import Holder
from lmjupyter.nodes.planner import NodePlanError, plan_nodes
from lmjupyter.nodes.registry import Node, NodeState

import pytest


def agent(name: str, gpus=(), address: str = "10.0.0.9") -> Node:
    return Node(name, name, address, list(gpus))


def test_gpu_rule_per_node_round_robin_skipping_held_gpus():
    b, c = agent("b", range(4)), agent("c", range(4))
    b.held = {0: Holder("other", 1)}
    plan = plan_nodes([b, c], "m", [1, 2, 3], nnodes=2, nproc=2, gpu=True, device_ids=None)
    # fewest shares first: worker 1 on b (GPUs 1,2 as 0 is held), worker 2 on c, worker 3 on c (b has 1 free GPU)
    assert [(w, [(n.name, g) for n, g in plan[w]]) for w in plan] == [
        (1, [("b", [1, 2])]), (2, [("c", [0, 1])]), (3, [("c", [2, 3])])]


def test_device_ids_apply_on_every_node():
    plan = plan_nodes([agent("b", range(8))], "m", [1], nnodes=2, nproc=2, gpu=True, device_ids=[4, 5])
    assert plan[1][0][1] == [4, 5]


def test_one_distinct_agent_per_node_and_cpu_groups_balance_load():
    b, c, d = agent("b"), agent("c"), agent("d")
    c.shares = {"s": object()}
    plan = plan_nodes([b, c, d], "m", [1, 2], nnodes=3, nproc=1, gpu=False, device_ids=None)
    assert [n.name for n, _ in plan[1]] == ["b", "d"]
    assert [n.name for n, _ in plan[2]] == ["b", "c"]  # all have 1 share now: the earliest registered first


def test_refusal_names_what_is_missing_and_why_each_agent_cannot_help():
    lost = agent("c", address="10.0.0.3")
    lost.state, lost.lost_reason = NodeState.LOST, "no heartbeat for 11.0s"
    full = agent("b", [0, 1], address="10.0.0.2")
    full.held = {0: Holder("x", 1), 1: Holder("x", 1)}
    with pytest.raises(NodePlanError) as refused:
        plan_nodes([full, lost, agent("d", [0, 1])], "m", [1], nnodes=4, nproc=2, gpu=True, device_ids=None)
    message = str(refused.value)
    assert message.startswith("torchrun.nnodes = 4: m worker 1 needs 4 nodes")
    assert "only 1 agent can take it (usable: d (10.0.0.9)); missing: 2 nodes" in message
    assert "b (10.0.0.2): m worker 1 needs 2 GPU(s) but only 0 of [0, 1] are free (held: GPU 0: x worker 1" in message
    assert "c (10.0.0.3) is lost: no heartbeat for 11.0s" in message
    with pytest.raises(NodePlanError, match="but only 0 agents can take it"):
        plan_nodes([], "m", [1], nnodes=2, nproc=1, gpu=False, device_ids=None)
