"""Hostile clients on raw sockets, shared by the CI test and benchmarks/hostile_clients.py."""
from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlparse


def address(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname, parsed.port


def predict_head(url: str, token: str, model: str, length: int | None, stream: bool = False) -> bytes:
    """The request line and headers of a predict call (no body)."""
    host, port = address(url)
    query = "?stream=1" if stream else ""
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST /lmserve/api/models/{model}/predict{query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: token {token}\r\nContent-Type: application/json\r\n{size}\r\n").encode()


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(address(url), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    """Whatever the server sends until it closes, or ``limit`` bytes, or the socket's timeout."""
    data = b""
    try:
        while len(data) < limit:
            chunk = sock.recv(limit - len(data))
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def slowloris(url: str, count: int) -> list[socket.socket]:
    """``count`` connections that send half a request line and then nothing."""
    host, port = address(url)
    socks = []
    for _ in range(count):
        sock = connect(url)
        sock.sendall(f"POST /lmserve/api/models/echo/predict HTTP/1.1\r\nHost: {host}:{port}\r\nX-Slow: ".encode())
        socks.append(sock)
    return socks


def drop_mid_request(url: str, token: str, model: str, count: int) -> None:
    """``count`` connections open at once, each cut at a different point of a request: in the
    headers, in the body, or after the whole request before reading the answer; then all are
    dropped together (an RST, not a clean close)."""
    body = b'{"x": "' + b"y" * 4000 + b'"}'
    head = predict_head(url, token, model, len(body))
    socks = []
    try:
        for i in range(count):
            sock = connect(url)
            socks.append(sock)
            cut = (len(head) // 2, len(head) + len(body) // 2, len(head) + len(body))[i % 3]
            sock.sendall((head + body)[:cut])
    finally:
        for sock in socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            sock.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_for(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
