"""Starting and stopping one worker group whose ranks live on several hosts.

A :class:`MultiNodeLaunch` is the ``remote`` hook of a :class:`WorkerSpec` with
``nnodes > 1``. At each start of the group it waits until enough agents are online
(a restart after a node was lost waits here, and the worker description says for
what), takes their GPUs, and starts every node's torchrun with torchrun's own
multi-node rendezvous::

    --nnodes N --node-rank k --rdzv-backend c10d --rdzv-endpoint <node 0>:<free port>
    --rdzv-id <this start> --rdzv-conf is_host=<1 on node 0, else 0>,join_timeout=<startupTimeout>
    --local-addr <the node's address>

``is_host`` is explicit because hosts may share a hostname (containers, network
namespaces), and torchrun otherwise guesses from it which node hosts the store.
torchrun numbers the nodes itself (sorted by address), so global ranks are learned
from the ranks' hello, not assumed. Node 0 runs here and its ranks use the unix
socket; the agents' ranks connect to the rank port over TCP with this start's secret.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from typing import TYPE_CHECKING

from lmjupyter.engine.states import WorkerState
from lmjupyter.gpus import Holder
from lmjupyter.nodes import netif
from lmjupyter.nodes.planner import NodePlanError, plan_nodes
from lmjupyter.nodes.registry import NodeRegistry, Share

if TYPE_CHECKING:
    from lmjupyter.engine.worker_group import WorkerGroup

log = logging.getLogger("lmjupyter")
PASSED_ENV = ("OMP_NUM_THREADS",)  # what the agent's ranks take from the server's plan (CUDA_VISIBLE_DEVICES is per node)


def node_args(base: list[str], node_rank: int, address: str, endpoint: str, run_id: str,
              join_timeout: float) -> list[str]:
    """torchrun's arguments on one node of a multi-node group."""
    return [*base, "--node-rank", str(node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
            "--rdzv-id", run_id, "--rdzv-conf", f"is_host={int(node_rank == 0)},join_timeout={int(join_timeout)}",
            "--local-addr", address]


def torchrun_command(args: list[str], python: str = sys.executable) -> list[str]:
    return [python, "-m", "torch.distributed.run", *args, "-m", "lmjupyter.worker.main", "SPEC"]


class MultiNodeLaunch:
    def __init__(self, registry: NodeRegistry, *, model: str, worker_id: int, nnodes: int, nproc: int,
                 gpu: bool, device_ids: list[int] | None, python_path: list[str]):
        self.registry = registry
        self.model, self.worker_id = model, worker_id
        self.nnodes, self.nproc, self.gpu, self.device_ids = nnodes, nproc, gpu, device_ids
        self.python_path = list(python_path)
        self.shares: list[Share] = []
        self.waiting: str | None = None   # why the start waits for nodes (shown by describe)
        self.endpoint: str | None = None
        self._keys: list[bytes] = []
        self._ended: list[Share] = []     # the last start's shares, still described after they ended

    # ---- start ------------------------------------------------------------------------------
    async def launch(self, group: "WorkerGroup") -> None:
        """Node 0 here, the others through their agents; ranks then say hello to the group."""
        await self.registry.listener.start()
        plan = await self._wait_for_nodes(group)  # no await from here until the shares hold their GPUs
        try:
            await self._start(group, plan)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, group: "WorkerGroup", plan: list) -> None:
        spec = group.spec
        registry, local = self.registry, self.registry.local
        rank_port = registry.listener.port
        self.endpoint = netif.host_port(local.address, netif.free_port(local.address))
        run_id = f"lmj-{spec.model_name[:40]}-w{spec.worker_id}-{secrets.token_hex(4)}"
        base = list(spec.torchrun_args)

        def args(node_rank: int, address: str) -> list[str]:
            return node_args(base, node_rank, address, self.endpoint, run_id, spec.startup_timeout)

        holder = Holder(self.model, self.worker_id)
        for node_rank, (node, gpus) in enumerate(plan, start=1):
            share = registry.add_share(node, node_rank, gpus, holder, spec.log_dir, group._broken)
            self.shares.append(share)
            key_id, secret = registry.listener.expect(lambda node=node: group.rank_protocol(node.name))
            self._keys.append(key_id)
            env = {key: spec.env[key] for key in PASSED_ENV if key in spec.env}
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
            payload = {**group._payload(), "tcp": {"host": local.address, "port": rank_port,
                                                   "key": key_id.hex(), "secret": secret.hex()}}
            node.send({"op": "start", "share": share.id, "args": args(node_rank, node.address), "env": env,
                       "python_path": self.python_path, "spec": payload})
        # Node 0 starts as any group does; its spec is made for this start only, so it can take node 0's arguments.
        spec.torchrun_args = args(0, local.address)
        spec.env.update(netif.socket_env(local.address, spec.env))
        await group._launch()
        log.info("worker %d of %s: node 0 here, %s; rendezvous at %s", spec.worker_id, spec.model_name,
                 ", ".join(f"node {s.node_rank} on {s.node.name} ({s.node.address})" for s in self.shares),
                 self.endpoint)

    async def _wait_for_nodes(self, group: "WorkerGroup") -> list:
        from lmjupyter.engine.worker_group import WorkerStartError

        while True:
            if group.state in (WorkerState.STOPPING, WorkerState.STOPPED, WorkerState.FAILED):
                raise WorkerStartError(f"worker {group.id} was stopped while waiting for nodes")
            try:
                plan = plan_nodes(list(self.registry.agents.values()), self.model, [self.worker_id],
                                  self.nnodes, self.nproc, self.gpu, self.device_ids)[self.worker_id]
            except NodePlanError as exc:
                if self.waiting is None:
                    log.warning("worker %d of %s waits for nodes: %s", group.id, self.model, exc)
                self.waiting = str(exc)
                await self.registry.wait_change(1.0)
                continue
            self.waiting = None
            return plan

    # ---- stop -------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Every agent ends its share's processes (bounded); this start's keys stop working."""
        for key_id in self._keys:
            self.registry.listener.forget(key_id)
        self._keys.clear()
        shares, self.shares = self.shares, []
        self._ended = shares
        await asyncio.gather(*(self.registry.stop_share(share) for share in shares))

    # ---- description ------------------------------------------------------------------------
    def describe_into(self, group: "WorkerGroup", out: dict) -> None:
        """Add where each rank runs (node, host, device) and the group's nodes to a worker's description."""
        local = self.registry.local
        process = group.process
        nodes = [{"node_rank": 0, "node": local.name, "host": local.hostname, "address": local.address,
                  "devices": group.spec.devices, "state": "running" if process and process.returncode is None
                  else ("exited" if process else "starting"),
                  "pid": process.pid if process else None, "exit_code": process.returncode if process else None}]
        nodes += [share.describe() for share in self.shares or self._ended]
        by_name = {n["node"]: n for n in nodes}
        links = {link.rank: link for link in group.ranks.values()}
        for rank in out["ranks"]:
            link = links.get(rank["rank"])
            node = by_name.get(link.node if link is not None and link.node else local.name, nodes[0])
            devices = [d for d in node["devices"].split(",") if d]
            rank.update(node=node["node"], host=node["host"], address=node["address"],
                        device=f"GPU {devices[rank['rank'] % self.nproc]}" if self.gpu and devices else "cpu")
        out["nodes"] = nodes
        out["rendezvous"] = self.endpoint
        if self.waiting:
            out["waiting_for_nodes"] = self.waiting
