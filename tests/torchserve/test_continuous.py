"""TorchServe's continuous batching (``continuousBatching: true``) for a handler in its own idiom:
requests join a running batch at the next iteration and leave it when their criteria say so."""
import concurrent.futures
import json
import threading
import time

import pytest
import requests

from markit import build_mar

CONFIG = "minWorkers: 1\nmaxWorkers: 1\ndeviceType: cpu\nbatchSize: 4\ncontinuousBatching: true\n"


def stream(server, count: int, started: threading.Event | None = None) -> tuple[list[dict], float]:
    response = requests.post(server.url + "predictions/count", data=json.dumps({"count": count}),
                             headers={"Authorization": f"Bearer {server.token}",
                                      "Content-Type": "application/json"}, stream=True, timeout=120)
    assert response.status_code == 200, response.text
    lines = []
    for chunk in response.iter_content(chunk_size=None):
        lines += [json.loads(line) for line in chunk.decode().splitlines() if line]
        if started is not None and len(lines) >= 3:
            started.set()
    return lines, time.monotonic()


@pytest.mark.timeout(180)
def test_a_short_request_joins_the_running_batch_and_leaves_first(ts_server):
    mar = build_mar(f"{ts_server.root}/mars-cb", "count", "iterate_count.py", config=CONFIG)
    described = ts_server.client.deploy(archive=mar, wait=True)
    assert described["state"] == "ready" and described["workers"][0]["slots"]["total"] == 4
    started = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long = pool.submit(stream, ts_server, 400, started)
        assert started.wait(60)
        short, short_done = stream(ts_server, 3)
        long_lines, long_done = long.result(timeout=120)
    assert [line["n"] for line in short] == [0, 1, 2]
    assert all(line["batch"] == 2 for line in short), short      # it ran beside the long one
    assert [line["n"] for line in long_lines] == list(range(400))
    assert long_lines[0]["batch"] == 1 and {line["batch"] for line in long_lines} == {1, 2}
    assert short_done < long_done
    partials, final = ts_server.client.predict_stream("count", {"count": 2})  # lmjupyter's own stream
    assert [json.loads(p)["n"] for p in partials] + [json.loads(final)["n"]] == [0, 1]
    ts_server.client.undeploy("count")
