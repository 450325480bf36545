"""Part 3 of issue 13 (correctness; the latency figures are benchmarks/hostile_clients.py's):
bodies over the limit, slowloris, connections dropped mid-request and streams nobody reads
cost the server a bounded amount, and the other clients keep being answered without 5xx."""
import concurrent.futures
import socket
import time

import pytest
import requests

from hostile import (connect, drop_mid_request, open_fds, predict_head, read_response, rss_mib, slowloris,
                     wait_for)
from serverproc import ServerProcess, handler_path

pytestmark = pytest.mark.timeout(180)
TIMEOUT_S = 2  # --client-timeout of the server under test
ECHO = "lmjupyter.handlers.base:BaseHandler"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(str(tmp_path_factory.mktemp("hostile")), "--max-body-size", "1M",
                         "--client-timeout", str(TIMEOUT_S))
    config = {"deviceType": "cpu", "minWorkers": 1, "maxWorkers": 1, "batchSize": 8}
    proc.client.deploy("echo", ECHO, config=config, wait=True)
    proc.client.deploy("firehose", handler_path("firehose.py"), config=config, wait=True)
    yield proc
    alive = proc.proc.poll() is None
    proc.stop()
    assert alive, proc.log()[-3000:]


def others_answered(server, count=40) -> list[int]:
    """What an ordinary client gets meanwhile: statuses of ``count`` predicts from 4 threads."""
    def one(i):
        response = requests.post(server.url + "lmserve/api/models/echo/predict", json={"i": i}, timeout=30,
                                 headers={"Authorization": f"token {server.token}"})
        assert response.status_code != 200 or response.json() == {"i": i}
        return response.status_code
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def test_an_announced_oversize_body_gets_413_before_it_is_sent(server):
    sock = connect(server.url)
    sock.sendall(predict_head(server.url, server.token, "echo", 10 << 30))  # 10 GiB announced, none sent
    answer = read_response(sock).decode()
    sock.close()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "larger than the server's limit of 1 MiB" in answer and "--max-body-size" in answer


def test_bodies_over_the_limit_get_413_whole_or_chunked_and_memory_stays_flat(server):
    before = rss_mib(server.proc.pid)
    headers = {"Authorization": f"token {server.token}"}
    for path in ("lmserve/api/models/echo/predict", "lmserve/api/models"):
        big = requests.post(server.url + path, data=b"x" * (3 << 20), headers=headers, timeout=30)
        assert big.status_code == 413 and "1 MiB" in big.json()["error"]["message"]
        chunked = requests.post(server.url + path, data=iter([b"y" * (1 << 16)] * 48), headers=headers, timeout=30)
        assert chunked.status_code == 413, chunked.text
    just = requests.post(server.url + "lmserve/api/models/echo/predict", data=b'"' + b"z" * ((1 << 20) - 2) + b'"',
                         headers={**headers, "Content-Type": "application/json"}, timeout=30)
    assert just.status_code == 200 and len(just.json()) == (1 << 20) - 2
    assert rss_mib(server.proc.pid) - before < 40  # 3 MiB bodies were not kept (1 MiB was, once)


def test_slowloris_connections_are_cut_and_do_not_block_others(server):
    base_fds = open_fds(server.proc.pid)
    slow = slowloris(server.url, 200)
    try:
        assert wait_for(lambda: open_fds(server.proc.pid) >= base_fds + 150, 5)  # accepted and held
        assert others_answered(server) == [200] * 40
        started = time.monotonic()
        for sock in slow:  # the server hangs up on each once client_timeout has passed
            sock.settimeout(TIMEOUT_S + 10)
            assert sock.recv(100) == b""
        assert time.monotonic() - started < TIMEOUT_S + 10
    finally:
        for sock in slow:
            sock.close()
    assert wait_for(lambda: open_fds(server.proc.pid) <= base_fds + 5, 10), (open_fds(server.proc.pid), base_fds)


def test_500_connections_dropped_mid_request_cost_nothing_lasting(server):
    base_fds = open_fds(server.proc.pid)
    drop_mid_request(server.url, server.token, "echo", 500)
    assert others_answered(server) == [200] * 40
    assert wait_for(lambda: open_fds(server.proc.pid) <= base_fds + 5, 15), (open_fds(server.proc.pid), base_fds)
    assert server.client.predict("echo", {"after": 500}) == {"after": 500}


def test_a_stream_nobody_reads_is_cut_after_client_timeout_and_others_go_on(server):
    body = b'{"parts": 400, "size": 50000}'  # 20 MB of NDJSON: more than the socket buffers hold
    sock = connect(server.url)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(predict_head(server.url, server.token, "firehose", len(body), stream=True) + body)
    sent = time.monotonic()
    try:
        assert others_answered(server, 20) == [200] * 20  # the worker finished the stream; others go on
        rss_stalled = rss_mib(server.proc.pid)
        time.sleep(max(0.0, sent + TIMEOUT_S + 1.5 - time.monotonic()))  # past client_timeout, unread
        sock.settimeout(TIMEOUT_S + 15)  # now read: what was sent, then the server's close
        received, started = 0, time.monotonic()
        while chunk := read_response(sock, 1 << 20):
            received += len(chunk)
            if time.monotonic() - started > TIMEOUT_S + 15:
                break
        assert 0 < received < 20_000_000, received
    finally:
        sock.close()
    metrics = server.client.metrics()
    assert 'status="408"' in metrics, metrics  # counted as a client that stopped reading
    assert rss_mib(server.proc.pid) < rss_stalled + 40
    assert server.client.predict("echo", {"after": "stream"}) == {"after": "stream"}


def in_flight(server) -> float:
    """``lmjupyter_http_requests_in_flight`` as a scrape sees it (the scrape counts itself: idle is 1)."""
    for line in server.client.metrics().splitlines():
        if line.startswith("lmjupyter_http_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("lmjupyter_http_requests_in_flight is not in /lmserve/metrics")


def test_clients_that_leave_mid_body_are_counted_out(server):
    """A client that leaves before its body is in must end its request. A streamed-body handler that
    overrode on_connection_close without Tornado's waited for the body forever (~10 KiB each, the
    soak's RSS growth); the in-flight gauge stays up for each such handler, so it witnesses the leak
    deterministically. Both ways a predict is served: the ordinary handler (``?stream=1``) and the
    fast path (plain POST)."""
    assert wait_for(lambda: in_flight(server) == 1, 10), in_flight(server)  # idle: only the scrape
    body = b'{"x": "' + b"y" * 4000 + b'"}'
    for stream in (True, False):
        head = predict_head(server.url, server.token, "echo", len(body), stream=stream)
        socks = [connect(server.url) for _ in range(50)]
        try:
            for sock in socks:
                sock.sendall(head + body[:100])  # Content-Length promises ~4 KB more than is sent
            # all 50 are seen waiting for their bodies (else the figure below would prove nothing)
            assert wait_for(lambda: in_flight(server) == 51, 10), (stream, in_flight(server))
        finally:
            for sock in socks:
                sock.close()
        assert wait_for(lambda: in_flight(server) == 1, 10), \
            f"stream={stream}: {in_flight(server) - 1:.0f} of 50 requests whose client left mid-body still in flight"
    assert server.client.predict("echo", {"still": "here"}) == {"still": "here"}
    assert in_flight(server) == 1
