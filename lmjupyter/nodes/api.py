"""REST routes of the node agents, mounted through the one route table (lmjupyter/server/api.py).

``GET /nodes`` lists this host and every agent (what ``%lmserve nodes`` and the panels show).
The others are the agent's protocol, authenticated with the server token like every route:

- ``POST /nodes``: register; the answer carries the ``session`` that later calls name;
- ``POST /nodes/{name}/commands``: the long poll (``{"session", "wait"}``) that hands the agent
  its commands (start or stop a share) and is its heartbeat;
- ``POST /nodes/{name}/events``: what happened to its shares (started, log lines, exited);
- ``DELETE /nodes/{name}?session=S``: the agent stops; without a session, forget a lost node.

The classes here are mixins without a base: the route table (lmjupyter/server/api.py) joins
each with its ``ApiMixin`` and ``api_errors``, so that this module imports nothing of it.
"""
from __future__ import annotations

import asyncio

import lmjupyter
from lmjupyter.errors import ApiError
from lmjupyter.nodes.registry import NodeState


class NodesHandler:
    async def get(self):
        self.send_json({"nodes": self.engine.describe_nodes()})

    async def post(self):
        registry = self.engine.nodes
        node = registry.register(self.json_body(), peer=self.request.remote_ip)
        self.send_json({"name": node.name, "session": node.session, "address": node.address,
                        "poll_wait": registry.poll_wait, "timeout": registry.timeout,
                        "server_version": lmjupyter.__version__}, 201)


class NodeHandler:
    async def get(self, name):
        node = next((n for n in self.engine.describe_nodes() if n["name"] == name), None)
        if node is None:
            raise ApiError(404, f"no node named {name!r}")
        self.send_json(node)

    async def delete(self, name):
        registry = self.engine.nodes
        session = self.get_argument("session", None)
        if session is not None:
            registry.leave(registry.session(name, session))
        else:
            node = registry.agents.get(name)
            if node is None:
                raise ApiError(404, f"no agent node named {name!r}")
            if node.state == NodeState.ONLINE:
                raise ApiError(409, f"node {name!r} is online; stop its agent (SIGTERM) to remove it")
            registry.agents.pop(name, None)
        self.send_json({"name": name, "state": "removed"})


def _agent_body(handler) -> dict:
    """An agent's poll or report: a JSON object (the agent always sends one)."""
    body = handler.json_body()
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object with the agent's session, not {type(body).__name__}")
    return body


class NodeCommandsHandler:
    _waiter: asyncio.Future | None = None

    async def post(self, name):
        body = _agent_body(self)
        registry = self.engine.nodes
        node = registry.session(name, str(body.get("session", "")))
        wait = body.get("wait", registry.poll_wait)
        if not isinstance(wait, (int, float)) or isinstance(wait, bool) or wait < 0:
            raise ApiError(400, f"wait = {wait!r}: expected seconds >= 0", key="wait")
        self._waiter = asyncio.get_running_loop().create_future()
        commands = await registry.poll(node, wait, self._waiter)
        if not self._waiter.cancelled():
            self.send_json({"commands": commands})

    def on_connection_close(self):
        """The agent went away mid-poll (killed, or its host cut off): the registry hears of it now."""
        super().on_connection_close()  # a body still arriving ends too (else the handler waits forever)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()


class NodeEventsHandler:
    async def post(self, name):
        body = _agent_body(self)
        registry = self.engine.nodes
        registry.events(registry.session(name, str(body.get("session", ""))), body.get("events"))
        self.send_json({"ok": True})
