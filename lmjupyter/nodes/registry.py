"""The nodes a server knows: its own host, and the ``lmjupyter node`` agents registered with it.

An agent registers (``POST /nodes``), then long-polls for commands
(``GET /nodes/{name}/commands``), which doubles as its heartbeat, and posts what
happened to the shares it runs (``POST /nodes/{name}/events``: started, exited,
log lines). The registry marks an agent *lost* when its poll connection drops
(``DROP_GRACE`` later, so that a poll that merely ended is not a death) or when no
poll came for ``timeout`` seconds (an agent cut off by the network). A lost agent's
shares are gone: every worker group with a share there is broken at once (its
in-flight batch fails with 502) and restarts when enough nodes are back.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from lmjupyter._version import __version__
from lmjupyter.errors import ApiError
from lmjupyter.gpus import Holder
from lmjupyter.nodes.rank_listener import RankListener

log = logging.getLogger("lmjupyter")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOG_FILE = re.compile(r"^(rank\d{1,5}|agent)\.log$")
DROP_GRACE = 1.0        # s after a poll connection closed mid-wait before the agent counts as lost
MAX_POLL_WAIT = 30.0
REGISTER_KEYS = {"name", "hostname", "address", "gpus", "pid", "version", "instance"}


class NodeState(str, Enum):
    ONLINE = "online"
    LOST = "lost"


@dataclass(eq=False)
class Share:
    """One worker group's torchrun on one agent (its node rank k >= 1)."""

    id: str
    node: "Node"
    node_rank: int
    gpus: list[int]
    holder: Holder
    log_dir: str                       # the group's log folder on the server: ranks' logs are mirrored there
    on_gone: Callable[[str], None]     # the group's "broken" callback
    state: str = "starting"            # starting, running, exited, lost
    pid: int | None = None             # torchrun's pid on the agent's host
    exit_code: int | None = None
    stopping: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def describe(self) -> dict:
        return {"node_rank": self.node_rank, "node": self.node.name, "host": self.node.hostname,
                "address": self.node.address, "devices": ",".join(map(str, self.gpus)),
                "state": self.state, "pid": self.pid, "exit_code": self.exit_code}


@dataclass(eq=False)
class Node:
    name: str
    hostname: str
    address: str
    gpus: list[int]
    local: bool = False
    pid: int | None = None
    version: str = ""
    instance: str = ""                 # one per agent process: a restarted agent is a new instance
    session: str = ""                  # one per registration: polls of an ended one get 404
    state: NodeState = NodeState.ONLINE
    registered: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    deadline: float | None = None      # monotonic time by which the next poll must come
    overdue: str = ""                  # why the agent is lost if that poll does not come
    lost_reason: str = ""
    held: dict[int, Holder] = field(default_factory=dict)
    shares: dict[str, Share] = field(default_factory=dict)
    commands: list[dict] = field(default_factory=list)
    waiters: list[asyncio.Future] = field(default_factory=list)

    def send(self, command: dict) -> None:
        self.commands.append(command)
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
                break

    def describe(self) -> dict:
        seen = None if self.local else 0.0 if self.waiters else round(time.monotonic() - self.last_seen, 1)
        return {"name": self.name, "hostname": self.hostname, "address": self.address, "local": self.local,
                "state": self.state.value, "lost_reason": self.lost_reason or None, "pid": self.pid,
                "version": self.version, "registered": self.registered, "last_seen_s": seen,
                "gpus": [{"id": g, "holder": ({"model": h.model, "worker": h.worker}
                                              if (h := self.held.get(g)) else None)} for g in self.gpus],
                "workers": [{"model": s.holder.model, "worker": s.holder.worker, "node_rank": s.node_rank,
                             "state": s.state} for s in self.shares.values()]}


class NodeRegistry:
    """The server's side of every agent, and the rank port their ranks connect to."""

    def __init__(self, local_name: str, hostname: str, address: str, gpus: list[int], *,
                 port: int = 0, timeout: float = 10.0, poll_wait: float = 2.0):
        self.local = Node(local_name, hostname, address, gpus, local=True, pid=os.getpid(), version=__version__)
        self.address = address
        self.timeout, self.poll_wait = timeout, poll_wait
        self.agents: dict[str, Node] = {}
        self.shares: dict[str, Share] = {}
        self.listener = RankListener(address, port)
        self._monitor: asyncio.Task | None = None
        self._change_waiters: list[asyncio.Future] = []

    # ---- agents' calls ---------------------------------------------------------------------------
    def register(self, body: dict, peer: str) -> Node:
        if not isinstance(body, dict):
            raise ApiError(400, "node registration must be a JSON object")
        unknown = sorted(set(body) - REGISTER_KEYS)
        if unknown:
            raise ApiError(400, f"unknown key(s) {unknown}; expected some of {sorted(REGISTER_KEYS)}", key=unknown[0])
        for key in ("hostname", "address", "version", "instance"):
            if key in body and not isinstance(body[key], str):
                raise ApiError(400, f"{key} = {body[key]!r}: expected a string", key=key)
        if "pid" in body and (not isinstance(body["pid"], int) or isinstance(body["pid"], bool)):
            raise ApiError(400, f"pid = {body['pid']!r}: expected an integer", key="pid")
        name = body.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ApiError(400, f"name = {name!r}: expected 1-64 letters, digits, '.', '_' or '-'", key="name")
        address = body.get("address") or peer
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise ApiError(400, f"address = {address!r}: expected an IP address of the agent's host",
                           key="address") from None
        gpus = body.get("gpus", [])
        if (not isinstance(gpus, list) or any(not isinstance(g, int) or isinstance(g, bool) or g < 0 for g in gpus)
                or len(set(gpus)) != len(gpus)):
            raise ApiError(400, f"gpus = {gpus!r}: expected a list of distinct GPU ids >= 0", key="gpus")
        if name == self.local.name:
            raise ApiError(409, f"node name {name!r} is this server's own host; start the agent with --name "
                                "<another name>", key="name")
        if _is_loopback(self.address) and not ipaddress.ip_address(address).is_loopback:
            raise ApiError(400, f"this server's node address is {self.address}, which {address} cannot reach: start "
                                "the server with --host or --node-address (c.LMServe.node_address in Jupyter) set to "
                                "an address of its host that the agents reach", key="address")
        instance = str(body.get("instance") or "")
        old = self.agents.get(name)
        if old is not None and old.state == NodeState.ONLINE:
            if old.instance != instance:
                raise ApiError(409, f"node {name!r} is already registered by another agent (pid {old.pid} at "
                                    f"{old.address}); give this one another --name", key="name")
            self._lose(old, "the agent registered again")
        node = Node(name, str(body.get("hostname") or name)[:255], address, sorted(gpus),
                    pid=body.get("pid"),
                    version=str(body.get("version") or "")[:64], instance=instance,
                    session=secrets.token_urlsafe(16))
        node.deadline, node.overdue = time.monotonic() + self.timeout, f"no heartbeat for {self.timeout:g}s"
        self.agents[name] = node
        log.info("node %s registered: %s (%s), GPUs %s", name, node.hostname, address, node.gpus or "none")
        self._start_monitor()
        self._notify()
        return node

    def session(self, name: str, session: str) -> Node:
        """The online agent ``name`` registered as ``session``, or 404: it must register again."""
        node = self.agents.get(name)
        if node is None or node.session != session or node.state != NodeState.ONLINE:
            raise ApiError(404, f"node {name!r}: this registration has ended (the agent was lost, or the "
                                "server restarted); register again")
        return node

    async def poll(self, node: Node, wait: float, waiter: asyncio.Future) -> list[dict]:
        """The node's pending commands, waiting up to ``wait`` s for one; cancel ``waiter`` when
        the connection drops. Every poll is a heartbeat."""
        wait = max(0.0, min(float(wait), MAX_POLL_WAIT))
        node.deadline = None
        try:
            if not node.commands and wait > 0:
                node.waiters.append(waiter)
                try:
                    await asyncio.wait([waiter], timeout=wait)
                finally:
                    node.waiters.remove(waiter)
                if waiter.cancelled():  # the agent's connection closed while it waited
                    return []
            commands, node.commands = node.commands, []
            return commands
        finally:
            node.last_seen = time.monotonic()
            if not node.waiters:
                if waiter.cancelled():
                    node.deadline, node.overdue = node.last_seen + DROP_GRACE, "its connection to the server closed"
                else:
                    node.deadline, node.overdue = node.last_seen + self.timeout, f"no heartbeat for {self.timeout:g}s"

    def events(self, node: Node, events: list) -> None:
        if not isinstance(events, list):
            raise ApiError(400, "events: expected a list", key="events")
        for event in events:
            share = self.shares.get(event.get("share")) if isinstance(event, dict) and isinstance(
                event.get("share"), str) else None
            if share is None or share.node is not node:
                continue  # a share the server has already let go of
            kind = event.get("kind")
            if kind == "started":
                share.pid, share.state = event.get("pid"), "running"
            elif kind == "log":
                self._append_log(share, event.get("file"), event.get("text"))
            elif kind == "exited":
                code = event.get("code")
                share.exit_code = code
                why = event.get("error") or f"exited with code {code}"
                tail = _tail(os.path.join(share.log_dir, f"agent-node{share.node_rank}.log"))
                self._end_share(share, "exited", f"torchrun of worker {share.holder.worker} on node {node.name} "
                                                 f"({node.address}) {why}" + (f"\n{tail}" if tail else ""))

    def leave(self, node: Node) -> None:
        """The agent stops (SIGTERM): it has ended its shares; forget it."""
        self._lose(node, "the agent stopped")
        self.agents.pop(node.name, None)
        self._notify()

    # ---- worker groups' calls -----------------------------------------------------------------
    def add_share(self, node: Node, node_rank: int, gpus: list[int], holder: Holder, log_dir: str,
                  on_gone: Callable[[str], None]) -> Share:
        share = Share(f"s-{secrets.token_hex(8)}", node, node_rank, list(gpus), holder, log_dir, on_gone)
        self.shares[share.id] = share
        node.shares[share.id] = share
        for gpu in gpus:
            node.held[gpu] = holder
        return share

    async def stop_share(self, share: Share, timeout: float = 15.0) -> None:
        """Ask the agent to end the share's processes; return when it says they have ended (or it is lost)."""
        share.stopping = True
        if share.id in self.shares and share.node.state == NodeState.ONLINE:
            share.node.send({"op": "stop", "share": share.id})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(share.done.wait(), timeout)
        if share.id in self.shares:  # no answer in time: stop waiting for it, keep its GPUs free
            self._end_share(share, share.state, "")

    def online_agents(self) -> list[Node]:
        return [n for n in self.agents.values() if n.state == NodeState.ONLINE]

    async def wait_change(self, timeout: float) -> None:
        """Return when a node registered or was lost, or after ``timeout`` s."""
        waiter = asyncio.get_running_loop().create_future()
        self._change_waiters.append(waiter)
        try:
            await asyncio.wait([waiter], timeout=timeout)
        finally:
            if waiter in self._change_waiters:
                self._change_waiters.remove(waiter)

    # ---- description --------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        return [self.local, *self.agents.values()]

    def describe(self) -> list[dict]:
        return [node.describe() for node in self.nodes()]

    async def shutdown(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        for node in self.agents.values():
            for waiter in node.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self.listener.close()

    # ---- inside ---------------------------------------------------------------------------------
    def _end_share(self, share: Share, state: str, reason: str) -> None:
        share.state = state
        self.shares.pop(share.id, None)
        share.node.shares.pop(share.id, None)
        for gpu in share.gpus:
            if share.node.held.get(gpu) == share.holder:
                del share.node.held[gpu]
        share.done.set()
        if not share.stopping and reason:
            share.on_gone(reason)

    def _lose(self, node: Node, reason: str) -> None:
        if node.state == NodeState.LOST:
            return
        node.state, node.lost_reason = NodeState.LOST, reason
        node.commands.clear()
        log.warning("node %s (%s) lost: %s", node.name, node.address, reason)
        for share in list(node.shares.values()):
            self._end_share(share, "lost", f"node {node.name} ({node.address}) was lost: {reason}")
        self._notify()

    def _start_monitor(self) -> None:
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        """Agents whose heartbeat (their next poll) is overdue are lost."""
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for node in list(self.agents.values()):
                if node.state == NodeState.ONLINE and node.deadline is not None and now > node.deadline:
                    self._lose(node, node.overdue)

    def _notify(self) -> None:
        waiters, self._change_waiters = self._change_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @staticmethod
    def _append_log(share: Share, name: Any, text: Any) -> None:
        if not isinstance(name, str) or not LOG_FILE.match(name) or not isinstance(text, str):
            return
        if name == "agent.log":
            name = f"agent-node{share.node_rank}.log"
        try:
            os.makedirs(share.log_dir, mode=0o700, exist_ok=True)
            with open(os.open(os.path.join(share.log_dir, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                      "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            log.warning("node %s: cannot mirror %s: %s", share.node.name, name, exc)


def _is_loopback(text: str) -> bool:
    """Whether an address is 127.x or ::1 (a host name is not known to be)."""
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _tail(path: str, lines: int = 15) -> str:
    """The end of a mirrored log (a remote torchrun's own output says why it stopped)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""
