"""The server's TCP port for ranks on other hosts (local ranks keep their unix socket).

One listener serves every worker group: a worker start that has ranks on an agent
registers a fresh key and secret (:meth:`RankListener.expect`); a connection is
handed to that group only after the handshake of :mod:`lmjupyter.nodes.handshake`
proved the peer holds the secret. Until then nothing it sends is decoded, and a
peer that does not finish the handshake within ``HANDSHAKE_TIMEOUT`` is dropped.
The port is bound to the node address the user configured, never to all addresses.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

from lmjupyter.nodes import handshake

log = logging.getLogger("lmjupyter")
HANDSHAKE_TIMEOUT = 10.0


@dataclass
class _Expected:
    secret: bytes
    make_protocol: Callable[[], asyncio.Protocol]  # the worker group's own connection protocol


class RankListener:
    def __init__(self, address: str, port: int = 0):
        self.address, self.port = address, port
        self._server: asyncio.AbstractServer | None = None
        self._expected: dict[bytes, _Expected] = {}
        self.refused = 0  # connections that failed the handshake (shown by GET /nodes)

    async def start(self) -> int:
        """Listen (once); the port actually bound."""
        if self._server is None:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Authenticating(self), host=self.address, port=self.port)
            self.port = self._server.sockets[0].getsockname()[1]
            log.info("rank port for other hosts: %s:%d", self.address, self.port)
        return self.port

    def expect(self, make_protocol: Callable[[], asyncio.Protocol]) -> tuple[bytes, bytes]:
        """A new (key id, secret) whose connections go to ``make_protocol()``'s protocol."""
        key_id, secret = handshake.new_key_id(), handshake.new_secret()
        self._expected[key_id] = _Expected(secret, make_protocol)
        return key_id, secret

    def forget(self, key_id: bytes) -> None:
        self._expected.pop(key_id, None)

    def _secret(self, key_id: bytes) -> bytes | None:
        expected = self._expected.get(key_id)
        return expected.secret if expected else None

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._expected.clear()


class _Authenticating(asyncio.Protocol):
    """Handshake first; then every byte goes to the worker group's protocol, as from a unix socket."""

    def __init__(self, listener: RankListener):
        self.listener = listener
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self._handshake = handshake.ServerSide(listener._secret)
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self._handshake.greeting)
        self._timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._give_up)

    def _give_up(self) -> None:
        if self.inner is None:
            self.listener.refused += 1
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
            return
        try:
            done = self._handshake.feed(data)
        except handshake.HandshakeError as exc:
            self.listener.refused += 1
            peer = self.transport.get_extra_info("peername")
            log.warning("rank port: dropped %s: %s", peer, exc)
            self.transport.abort()
            return
        if done is None:
            return
        key_id, reply, rest = done
        expected = self.listener._expected.get(key_id)
        if expected is None:  # forgotten between the lookup and now
            self.transport.abort()
            return
        self._timer.cancel()
        self.transport.write(reply)
        self.inner = expected.make_protocol()
        self.inner.connection_made(self.transport)
        if rest:
            self.inner.data_received(rest)

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.inner is not None:
            self.inner.connection_lost(exc)
