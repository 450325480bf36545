"""The TCP rank port: nothing a peer sends is unpickled before it proved it holds the worker's secret.

Real sockets on 127.0.0.1: the server's listener (asyncio) on one side, the rank's blocking
handshake (what a rank on another host runs) on the other.
"""
from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest

from lmjupyter import ipc
from lmjupyter.nodes import handshake
from lmjupyter.nodes.rank_listener import RankListener

pytestmark = pytest.mark.timeout(60)


class _Touch:
    """Unpickling this creates a file: proof that bytes were unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Recorder(asyncio.Protocol):
    def __init__(self, got: list):
        self.got, self.frames = got, ipc.FrameDecoder()

    def data_received(self, data):
        self.got.extend(self.frames.feed(data))


async def _with_listener(client, expect=True):
    """Run ``client(port, key, secret)`` on a thread against a listening RankListener."""
    listener = RankListener("127.0.0.1", 0)
    port = await listener.start()
    got: list = []
    key, secret = listener.expect(lambda: _Recorder(got)) if expect else (os.urandom(16), os.urandom(32))
    try:
        result = await asyncio.get_running_loop().run_in_executor(None, client, port, key, secret)
        await asyncio.sleep(0.2)
        return result, got, listener
    finally:
        bound = listener._server.sockets[0].getsockname()[0]
        listener.close()
        assert bound == "127.0.0.1"  # the configured address, not all addresses


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert sock.recv(handshake.GREETING, socket.MSG_WAITALL)[:4] == handshake.MAGIC
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_rank_with_the_secret_gets_through_and_its_frames_arrive():
    def rank(port, key, secret):
        channel = ipc.BlockingChannel(sock=handshake.connect("127.0.0.1", port, key, secret))
        channel.send(("hello", 1, 4242))
        channel.close()

    _, got, listener = asyncio.run(_with_listener(rank))
    assert got == [("hello", 1, 4242)] and listener.refused == 0


def test_a_pickle_sent_without_the_handshake_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    def attacker(port, key, secret):
        sock = _raw(port)
        sock.sendall(ipc.pack((_Touch(str(marker)),)) * 4)  # frames where the handshake answer belongs
        return _closed_by_server(sock)

    closed, got, listener = asyncio.run(_with_listener(attacker))
    assert closed and got == [] and listener.refused == 1
    assert not marker.exists()


def test_a_known_key_with_a_wrong_mac_is_dropped_before_its_frames(tmp_path):
    marker = tmp_path / "unpickled"

    def attacker(port, key, secret):
        sock = _raw(port)
        sock.sendall(key + os.urandom(handshake.NONCE + handshake.MAC) + ipc.pack((_Touch(str(marker)),)))
        return _closed_by_server(sock)

    closed, got, listener = asyncio.run(_with_listener(attacker))
    assert closed and got == [] and listener.refused == 1 and not marker.exists()


def test_a_forgotten_key_no_longer_opens_the_port():
    def rank(port, key, secret):
        with pytest.raises(handshake.HandshakeError):
            handshake.connect("127.0.0.1", port, key, secret, timeout=10)

    _, got, listener = asyncio.run(_with_listener(rank, expect=False))
    assert got == [] and listener.refused == 1


def test_a_rank_refuses_a_server_that_does_not_hold_the_secret(tmp_path):
    """An impostor on the server's address: the rank stops before reading any frame it sends."""
    marker = tmp_path / "unpickled"
    impostor = socket.create_server(("127.0.0.1", 0))
    port = impostor.getsockname()[1]

    def serve():
        conn, _ = impostor.accept()
        with conn:
            conn.sendall(handshake.MAGIC + os.urandom(handshake.NONCE))
            conn.recv(handshake.ANSWER, socket.MSG_WAITALL)
            conn.sendall(os.urandom(handshake.MAC) + ipc.pack((_Touch(str(marker)),)))
            try:
                conn.recv(1)  # until the rank hangs up
            except ConnectionResetError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with pytest.raises(handshake.HandshakeError, match="did not prove"):
        handshake.connect("127.0.0.1", port, os.urandom(16), os.urandom(32), timeout=10)
    thread.join(10)
    impostor.close()
    assert not marker.exists()
