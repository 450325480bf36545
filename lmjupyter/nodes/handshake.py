"""Mutual authentication of a rank's TCP connection to the server, before any pickle.

Frames on the rank socket are pickles (lmjupyter/ipc.py), and unpickling bytes from an
unknown peer runs its code. So a rank on another host and the server first prove to
each other that they hold the worker's secret, which the server made for this start
of this worker group and gave only to the agent that starts the ranks:

    server -> rank   MAGIC + server_nonce                                (36 bytes)
    rank -> server   key_id + rank_nonce + HMAC(secret, "rank" + ...)    (16 + 32 + 32 bytes)
    server -> rank   HMAC(secret, "server" + rank_nonce + server_nonce)  (32 bytes)

The server compares the rank's MAC in constant time and drops the connection at the
first wrong byte; the rank does the same with the server's answer. Only then does
either side read a frame. The secret itself never crosses the wire. (TLS is left to
the deployment: the handshake authenticates, it does not encrypt.)

Standard library only: the rank side runs in every rank before torch is imported.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import socket

MAGIC = b"LMJ1"
NONCE = 32
KEY_ID = 16
MAC = 32
GREETING = len(MAGIC) + NONCE
ANSWER = KEY_ID + NONCE + MAC


class HandshakeError(ConnectionError):
    """The peer did not prove it holds the worker's secret."""


def new_secret() -> bytes:
    return os.urandom(32)


def new_key_id() -> bytes:
    return os.urandom(KEY_ID)


def rank_mac(secret: bytes, server_nonce: bytes, rank_nonce: bytes, key_id: bytes) -> bytes:
    return hmac.new(secret, b"rank" + server_nonce + rank_nonce + key_id, hashlib.sha256).digest()


def server_mac(secret: bytes, server_nonce: bytes, rank_nonce: bytes) -> bytes:
    return hmac.new(secret, b"server" + rank_nonce + server_nonce, hashlib.sha256).digest()


class ServerSide:
    """The server's half, fed bytes as they arrive (an asyncio Protocol's data_received).

    ``lookup(key_id)`` returns the secret of a worker start the server expects, or None.
    """

    def __init__(self, lookup):
        self.nonce = os.urandom(NONCE)
        self.greeting = MAGIC + self.nonce
        self._lookup = lookup
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[bytes, bytes, bytes] | None:
        """None until the rank's answer is complete; then (key_id, reply to send, bytes after the answer).

        Raises HandshakeError for an unknown key or a wrong MAC.
        """
        self._buffer += data
        if len(self._buffer) < ANSWER:
            return None
        answer, rest = self._buffer[:ANSWER], self._buffer[ANSWER:]
        key_id, rank_nonce, mac = answer[:KEY_ID], answer[KEY_ID:KEY_ID + NONCE], answer[KEY_ID + NONCE:]
        secret = self._lookup(key_id)
        expected = rank_mac(secret or b"\0" * 32, self.nonce, rank_nonce, key_id)
        if not hmac.compare_digest(mac, expected) or secret is None:
            raise HandshakeError("a TCP peer failed the rank handshake (unknown worker or wrong secret)")
        return key_id, server_mac(secret, self.nonce, rank_nonce), rest


def connect(host: str, port: int, key_id: bytes, secret: bytes, timeout: float = 30.0) -> socket.socket:
    """The rank's half: a connected, authenticated TCP socket to the server (blocking mode)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        greeting = _read_exactly(sock, GREETING)
        if greeting[:len(MAGIC)] != MAGIC:
            raise HandshakeError(f"{host}:{port} is not an lmjupyter rank port")
        server_nonce = greeting[len(MAGIC):]
        rank_nonce = os.urandom(NONCE)
        sock.sendall(key_id + rank_nonce + rank_mac(secret, server_nonce, rank_nonce, key_id))
        reply = _read_exactly(sock, MAC)
        if not hmac.compare_digest(reply, server_mac(secret, server_nonce, rank_nonce)):
            raise HandshakeError(f"{host}:{port} did not prove it holds the worker's secret")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise HandshakeError("the server closed the connection during the handshake")
        data += chunk
    return data
