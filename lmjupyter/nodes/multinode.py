"""What the engine asks about worker groups of several hosts (``torchrun.nnodes > 1``).

Kept out of engine.py so that the engine only calls in at a few points: a deploy or
scale-up is refused (400) when too few agents could take its workers; a dry run
lists each worker's nodes and their torchrun commands; each worker start gets a
:class:`~lmjupyter.nodes.launch.MultiNodeLaunch`; ``GET /nodes`` is described here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from lmjupyter.errors import ApiError
from lmjupyter.nodes import netif
from lmjupyter.nodes.launch import MultiNodeLaunch, node_args, torchrun_command
from lmjupyter.nodes.planner import NodePlanError, plan_nodes

if TYPE_CHECKING:
    from lmjupyter.config import ModelConfig
    from lmjupyter.engine.engine import Engine
    from lmjupyter.engine.model import ServedModel

# Set by lmjupyter for every node of a multi-node group (nodes/launch.py); a config may not give them.
RESERVED_KEYS = {"node-rank", "node_rank", "rdzv-endpoint", "rdzv_endpoint", "rdzv-backend", "rdzv_backend",
                 "rdzv-id", "rdzv_id", "rdzv-conf", "rdzv_conf", "local-addr", "local_addr",
                 "master-addr", "master_addr", "master-port", "master_port"}


def plan_or_refuse(engine: "Engine", model: str, config: "ModelConfig", worker_ids: list[int]) -> dict | None:
    """The agents each new worker would take now; a 400 naming what is missing when too few can."""
    if config.nnodes == 1:
        return None
    try:
        return plan_nodes(list(engine.nodes.agents.values()), model, worker_ids, config.nnodes, config.nproc,
                          config.deviceType == "gpu", config.deviceIds)
    except NodePlanError as exc:
        raise ApiError(400, str(exc), key="torchrun.nnodes") from None


def launch_hook(engine: "Engine", model: "ServedModel", worker_id: int) -> MultiNodeLaunch | None:
    config = model.config
    if config.nnodes == 1:
        return None
    return MultiNodeLaunch(engine.nodes, model=model.name, worker_id=worker_id, nnodes=config.nnodes,
                           nproc=config.nproc, gpu=config.deviceType == "gpu", device_ids=config.deviceIds,
                           python_path=model.python_path)


def dry_run_nodes(engine: "Engine", worker: dict, args: list[str], config: "ModelConfig", assignment: list) -> None:
    """Add each node of a worker (0 = this host) with its torchrun command to a dry run's plan."""
    local = engine.nodes.local
    endpoint = netif.host_port(local.address, 0)[:-1] + "PORT"  # the free port is picked at each start
    omp = str(config.torchrun.omp_number_threads)
    rows = [(0, local, [int(d) for d in worker["devices"].split(",") if d])]
    rows += [(k, node, gpus) for k, (node, gpus) in enumerate(assignment, start=1)]
    worker["nodes"] = [{
        "node_rank": k, "node": node.name, "host": node.hostname, "address": node.address,
        "devices": ",".join(map(str, gpus)),
        "command": torchrun_command(node_args(args, k, node.address, endpoint, "RUN_ID", config.startupTimeout),
                                    python="python" if k else worker["command"][0]),
        "env": {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), "OMP_NUM_THREADS": omp},
    } for k, node, gpus in rows]
    worker["command"] = worker["nodes"][0]["command"]


def describe_nodes(engine: "Engine") -> list[dict]:
    """Every node: this host first (node 0 of every worker group, single-host ones included), then the agents."""
    nodes = engine.nodes.describe()
    local = nodes[0]
    engine.allocator.held = engine._held_gpus()
    local["gpus"] = engine.allocator.describe()
    local["workers"] = [{"model": m.name, "version": m.version, "worker": wid, "node_rank": 0,
                         "state": getattr(w.state, "value", str(w.state))}
                        for m in engine.models() for wid, w in sorted(m.workers.items())]
    return nodes
