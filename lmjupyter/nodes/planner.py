"""Which agents (and which of their GPUs) a worker group of ``nnodes`` hosts takes.

Node 0 of every group is the server's own host, whose GPUs the engine's allocator
plans as for any worker. Each other node is an online agent, a different one per
node of a group: the GPU rule per node (that node's ``nproc-per-node`` GPUs taken
round-robin from its free GPUs, or from ``deviceIds``), and among the agents that
can take a share, the one running the fewest shares first (then the earliest
registered). Too few such agents is a :class:`NodePlanError` that names what is
missing and why each other agent cannot help.
"""
from __future__ import annotations

from lmjupyter.gpus import GpuAllocationError, GpuAllocator, Holder
from lmjupyter.nodes.registry import Node, NodeState


class NodePlanError(ValueError):
    """Not enough nodes for a worker; the message names the missing ones."""


def plan_nodes(agents: list[Node], model: str, worker_ids: list[int], nnodes: int, nproc: int,
               gpu: bool, device_ids: list[int] | None) -> dict[int, list[tuple[Node, list[int]]]]:
    """For each worker, its nodes 1..nnodes-1 as (agent, GPUs); reserves nothing."""
    held = {node.name: dict(node.held) for node in agents}
    load = {node.name: len(node.shares) for node in agents}
    order = {node.name: i for i, node in enumerate(agents)}
    plan: dict[int, list[tuple[Node, list[int]]]] = {}
    for worker in worker_ids:
        chosen: list[tuple[Node, list[int]]] = []
        refusals: list[str] = []
        for node in sorted(agents, key=lambda n: (load[n.name], order[n.name])):
            if len(chosen) == nnodes - 1:
                break
            if node.state != NodeState.ONLINE:
                refusals.append(f"{node.name} ({node.address}) is lost: {node.lost_reason}")
                continue
            gpus: list[int] = []
            if gpu:
                allocator = GpuAllocator(node.gpus, held=held[node.name])
                try:
                    gpus = allocator.plan(model, [worker], nproc, device_ids)[worker]
                except GpuAllocationError as exc:
                    refusals.append(f"{node.name} ({node.address}): {_on_node(str(exc))}")
                    continue
            chosen.append((node, gpus))
        if len(chosen) < nnodes - 1:
            raise NodePlanError(_shortage(model, worker, nnodes, chosen, refusals))
        for node, gpus in chosen:
            load[node.name] += 1
            held[node.name].update({g: Holder(model, worker) for g in gpus})
        plan[worker] = chosen
    return plan


def _on_node(message: str) -> str:
    return message.replace("this server has none", "this node has none").replace(
        "do not exist on this server", "do not exist on this node")


def _shortage(model: str, worker: int, nnodes: int, chosen, refusals: list[str]) -> str:
    missing = nnodes - 1 - len(chosen)
    able = ", ".join(f"{n.name} ({n.address})" for n, _ in chosen) or "none"
    message = (f"torchrun.nnodes = {nnodes}: {model} worker {worker} needs {nnodes} nodes (this server's host and "
               f"{nnodes - 1} `lmjupyter node` agent{'s' if nnodes > 2 else ''}), but only {len(chosen)} agent"
               f"{'s' if len(chosen) != 1 else ''} can take it (usable: {able}); missing: {missing} node"
               f"{'s' if missing != 1 else ''}")
    if refusals:
        message += "; " + "; ".join(refusals)
    return message + ". Start `lmjupyter node --server URL --token T` on another host."
