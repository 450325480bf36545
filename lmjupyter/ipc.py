"""Frames between the server and its ranks: a 4-byte length, then a pickled tuple.

Both ends are our own processes, joined by a unix socket in a private 0700
directory, so pickle is safe here and is the cheapest way to move request bytes
without re-encoding them. Messages (tuples, first item the kind):

server -> rank: ("batch", batch_id, [(payload: bytes, content_type: str, meta: dict | None), ...]) and ("stop",);
                meta (the request's id and headers) only for TorchServe-style handlers;
                ("spec", {...}) to a warm spare's ranks when a deploy takes the group;
                to the leader of a continuous-batching group: ("add", request_id, payload, content_type,
                stream: bool, meta) and ("cancel", request_id)
rank -> server: ("hello", rank, pid), ("spare_ready", rank), ("ready", rank, output_rank, handler_info)
                (handler_info: {"slots": n} for continuous batching, {"request_rows": "torchserve"}),
                ("events", [(kind, request_id, encoded), ...], stats) from a continuous-batching leader
                (kind "partial" or "done"; stats {"running", "waiting", "generated"}),
                ("init_failed", rank, message, traceback),
                ("partial", batch_id, [(position, encoded), ...]), ("result", batch_id, [encoded...]),
                ("error", batch_id, rank, message, traceback), ("metrics", [update, ...])
where an encoded item is (status: int, content_type: str, body: bytes), or with a fourth
item, a dict of a TorchServe-style answer's "phrase", "headers" and "error_type".
"""
from __future__ import annotations

import pickle
import select
import socket
import struct

HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 31


def pack(message: tuple) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def unpack(data: bytes) -> tuple:
    return pickle.loads(data)


class FrameDecoder:
    """Frames out of a byte stream that arrives in arbitrary pieces (an asyncio Protocol's
    ``data_received``): every complete message, in order, as soon as its last byte is in."""

    def __init__(self):
        self._pending = bytearray()  # an incomplete frame; appending keeps large frames O(n)

    def feed(self, data: bytes) -> list[tuple]:
        if self._pending:
            self._pending += data
            data = self._pending
        messages = []
        position, end = 0, len(data)
        with memoryview(data) as view:
            while end - position >= HEADER.size:
                (length,) = HEADER.unpack_from(view, position)
                start = position + HEADER.size
                if end - start < length:
                    break
                messages.append(unpack(view[start:start + length]))
                position = start + length
            rest = view[position:]
            if not rest:
                self._pending = bytearray()
            elif data is not self._pending or position:
                self._pending = bytearray(rest)
            rest.release()
        return messages


async def read_message(reader) -> tuple | None:
    """Next message from an asyncio StreamReader, or None at end of stream."""
    try:
        header = await reader.readexactly(HEADER.size)
        (length,) = HEADER.unpack(header)
        return unpack(await reader.readexactly(length))
    except (ConnectionError, EOFError, OSError):
        return None
    except Exception as exc:  # IncompleteReadError is an EOFError; anything else is a broken peer
        if exc.__class__.__name__ == "IncompleteReadError":
            return None
        raise


class BlockingChannel:
    """The rank's end: plain blocking socket I/O, no event loop in the rank.

    ``receive`` blocks for the next message; ``poll`` returns what has arrived
    within ``timeout`` seconds without blocking longer (the continuous-batching
    loop polls between decode steps). Both read through one frame decoder.
    """

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self._frames = FrameDecoder()
        self._ready: list[tuple] = []
        self.closed = False

    def send(self, message: tuple) -> None:
        self.sock.sendall(pack(message))

    def receive(self) -> tuple | None:
        while not self._ready:
            if not self._read_some(None):
                return None
        return self._ready.pop(0)

    def poll(self, timeout: float) -> list[tuple] | None:
        """Messages that arrived within ``timeout`` s (maybe none); None once the server has gone."""
        if not self._ready and not self.closed:
            self._read_some(timeout)
            while not self.closed and self._read_some(0.0):
                pass
        if not self._ready and self.closed:
            return None
        messages, self._ready = self._ready, []
        return messages

    def _read_some(self, timeout: float | None) -> bool:
        """Read what is there (waiting up to ``timeout``; None: forever); False if nothing came."""
        if timeout is not None:
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if not readable:
                return False
        try:
            data = self.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self._ready.extend(self._frames.feed(data))
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
