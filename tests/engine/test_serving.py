"""Real torchrun worker groups behind a real ``lmjupyter serve``, on CPU with gloo."""
import concurrent.futures
import os
import signal
import threading
import time

import pytest
import requests

from lmjupyter.client import LMServeError
from serverproc import alive, cpu_config, handler_path, rank_pids, wait_until

pytestmark = pytest.mark.timeout(180)


def test_two_workers_two_ranks_answer_48_concurrent_requests(server):
    client = server.client
    config = cpu_config(minWorkers=2, maxWorkers=2, batchSize=8, parallelType="tp",
                        torchrun={"nproc-per-node": 2}, handler={"delay": 0.05})
    description = client.deploy("echo48", handler_path("echo.py"), config=config, wait=True)
    assert description["state"] == "ready"
    assert [len(w["ranks"]) for w in description["workers"]] == [2, 2]
    pids = rank_pids(description)
    assert len(set(pids)) == 4 and all(alive(pid) for pid in pids)

    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(lambda i: client.predict("echo48", {"n": i}), range(48)))
    assert [a["echo"]["n"] for a in answers] == list(range(48))
    assert {a["rank"] for a in answers} == {0}          # tp: rank 0 answers
    assert {a["world_size"] for a in answers} == {2}
    assert max(a["batch"] for a in answers) > 1         # batches formed under load
    assert len({a["pid"] for a in answers}) == 2        # both workers served

    client.undeploy("echo48")
    wait_until(lambda: not any(alive(pid) for pid in pids), 10, message="rank processes to end")
    assert all(m["name"] != "echo48" for m in client.list())


def test_idle_worker_takes_a_request_without_batch_delay(server):
    client = server.client
    client.deploy("nodelay", handler_path("echo.py"), config=cpu_config(batchSize=8, maxBatchDelay=2000), wait=True)
    started = time.perf_counter()
    answer = client.predict("nodelay", {"x": 1})
    assert answer["batch"] == 1 and time.perf_counter() - started < 1.0
    client.undeploy("nodelay")


def test_scale_up_and_down(server):
    client = server.client
    client.deploy("scaled", handler_path("echo.py"), config=cpu_config(minWorkers=1, maxWorkers=2), wait=True)
    up = client.scale("scaled", 2)
    assert len(up["workers"]) == 2 and all(w["state"] in ("ready", "busy") for w in up["workers"])
    extra = [r["pid"] for r in up["workers"][1]["ranks"]]
    with pytest.raises(LMServeError) as info:
        client.scale("scaled", 3)
    assert info.value.status == 400 and "1..2" in info.value.message
    down = client.scale("scaled", 1)
    assert [w["id"] for w in down["workers"]] == [1]
    wait_until(lambda: not any(alive(p) for p in extra), 10, message="retired worker to end")
    assert client.predict("scaled", "still here")["echo"] == "still here"
    client.undeploy("scaled")


def test_job_ticket_refuses_at_once_when_no_worker_is_idle(server):
    client = server.client
    config = cpu_config(useJobTicket=True, jobQueueSize=2)
    client.deploy("ticket", handler_path("echo.py"), config=config, wait=True)
    busy = threading.Thread(target=client.predict, args=("ticket", {"sleep": 2}))
    busy.start()
    wait_until(lambda: client.describe("ticket")["workers"][0]["state"] == "busy", 5, message="busy worker")
    started = time.perf_counter()
    with pytest.raises(LMServeError) as info:
        client.predict("ticket", {"x": 1})
    assert info.value.status == 503 and "idle" in info.value.message
    assert time.perf_counter() - started < 1.0
    busy.join()
    client.undeploy("ticket")


def test_full_queue_is_refused_with_503(server):
    client = server.client
    client.deploy("fullq", handler_path("echo.py"), config=cpu_config(jobQueueSize=1), wait=True)
    slow = [threading.Thread(target=client.predict, args=("fullq", {"sleep": 1.5})) for _ in range(2)]
    for thread in slow:
        thread.start()
    wait_until(lambda: client.describe("fullq")["queue"]["depth"] == 1, 5, message="one queued request")
    with pytest.raises(LMServeError) as info:
        client.predict("fullq", {"x": 1})
    assert info.value.status == 503 and "queue is full" in info.value.message
    for thread in slow:
        thread.join()
    client.undeploy("fullq")


def test_response_timeout_gives_504_and_replaces_the_worker(server):
    client = server.client
    config = cpu_config(responseTimeout=2, torchrun={"nproc-per-node": 2}, parallelType="tp")
    first = client.deploy("hang", handler_path("hang.py"), config=config, wait=True)
    hung = rank_pids(first)
    started = time.perf_counter()
    with pytest.raises(LMServeError) as info:
        client.predict("hang", {"hang": True})
    assert info.value.status == 504 and "responseTimeout" in info.value.message
    assert time.perf_counter() - started < 10
    wait_until(lambda: not any(alive(p) for p in hung), 10, message="hung ranks to be killed")
    wait_until(lambda: client.describe("hang")["workers"][0]["state"] == "ready", 60, message="replacement")
    answer = client.predict("hang", {"hang": False})
    assert answer["ok"] and answer["pid"] not in hung
    assert client.describe("hang")["metrics"]["worker_restarts"] == 1
    client.undeploy("hang")


def test_killed_rank_fails_its_request_at_once_and_the_worker_returns(server):
    client = server.client
    config = cpu_config(responseTimeout=60, torchrun={"nproc-per-node": 2}, parallelType="tp")
    first = client.deploy("victim", handler_path("echo.py"), config=config, wait=True)
    pids = rank_pids(first)
    outcome = {}

    def slow_request():
        started = time.perf_counter()
        try:
            outcome["answer"] = client.predict("victim", {"sleep": 30})
        except LMServeError as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.perf_counter() - started

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_until(lambda: client.describe("victim")["workers"][0]["state"] == "busy", 5, message="busy worker")
    os.kill(pids[1], signal.SIGKILL)
    thread.join(20)
    assert "error" in outcome and outcome["seconds"] < 10
    assert outcome["error"].status == 502 and "exited" in outcome["error"].message
    wait_until(lambda: client.describe("victim")["workers"][0]["state"] == "ready", 60, message="restart")
    assert not any(alive(p) for p in pids)
    assert client.predict("victim", "back")["echo"] == "back"
    client.undeploy("victim")


def test_streaming_sends_each_partial_before_the_handler_finishes(server):
    client = server.client
    client.deploy("stream", handler_path("streamer.py"), config=cpu_config(), wait=True)
    arrivals = []
    for partial in client.stream("stream", {"go": True}):
        arrivals.append((time.time(), partial))
    assert [p["step"] for _, p in arrivals] == [0, 1, 2, 3, 4]
    # each partial reached us long before the handler's last step (0.4 s apart)
    assert arrivals[-1][0] - arrivals[0][0] > 1.2
    partials, final = client.predict_stream("stream", {"go": True})
    assert len(partials) == 5 and final["done"] and final["at"] >= partials[-1]["at"]
    assert client.predict("stream", {"go": True})["steps"] == 5   # unstreamed: the final answer only
    client.undeploy("stream")


def test_initialize_failure_reaches_the_client_and_marks_the_model_failed(server):
    client = server.client
    config = cpu_config(torchrun={"nproc-per-node": 2})
    with pytest.raises(LMServeError) as info:
        client.deploy("broken", handler_path("broken_init.py"), config=config, wait=True)
    assert info.value.status == 500
    assert "checkpoint weights.pt not found" in info.value.message
    assert "FileNotFoundError" in info.value.detail["traceback"]
    description = client.describe("broken")
    assert description["state"] == "failed" and description["workers"] == []
    with pytest.raises(LMServeError) as predict_info:
        client.predict("broken", "x")
    assert predict_info.value.status == 503 and "failed" in predict_info.value.message
    logs = " ".join(" ".join(entry["lines"]) for entry in client.logs("broken")) if client.describe("broken")["workers"] else ""
    assert logs == ""  # no workers remain
    client.undeploy("broken")


def test_handler_error_fails_only_its_batch(server):
    client = server.client
    client.deploy("raises", handler_path("raises.py"), config=cpu_config(), wait=True)
    with pytest.raises(LMServeError) as info:
        client.predict("raises", {"fail": True})
    assert info.value.status == 500 and "ValueError: the model cannot take this input" in info.value.message
    assert "Traceback" in info.value.detail["traceback"]
    assert client.predict("raises", {"fail": False}) == {"ok": {"fail": False}}
    client.undeploy("raises")


def test_bad_json_body_gets_400_and_text_bodies_pass(server):
    client = server.client
    client.deploy("bodies", handler_path("echo.py"), config=cpu_config(), wait=True)
    url = f"{server.url}lmserve/api/models/bodies/predict"
    headers = {"Authorization": f"token {server.token}"}
    bad = requests.post(url, data=b"{not json", headers={**headers, "Content-Type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    text = requests.post(url, data="plain words", headers={**headers, "Content-Type": "text/plain"})
    assert text.json()["echo"] == "plain words"
    client.undeploy("bodies")


def test_client_that_disconnects_does_not_break_the_worker(server):
    client = server.client
    client.deploy("gone", handler_path("echo.py"), config=cpu_config(), wait=True)
    with pytest.raises(requests.Timeout):
        requests.post(f"{server.url}lmserve/api/models/gone/predict", json={"sleep": 1.0},
                      headers={"Authorization": f"token {server.token}"}, timeout=0.3)
    assert client.predict("gone", "after")["echo"] == "after"
    assert client.describe("gone")["workers"][0]["state"] == "ready"
    client.undeploy("gone")


def test_torchserve_style_handler_runs_unchanged(server):
    client = server.client
    config = cpu_config(batchSize=4, handler={"prefix": "words="})
    client.deploy("tsstyle", handler_path("torchserve_style.py"), config=config, wait=True)
    assert client.predict("tsstyle", "one two three") == b"words=3"  # row["body"] in, text out, as in TorchServe
    client.undeploy("tsstyle")


def test_startup_timeout_fails_the_deploy_and_ends_the_ranks(server):
    client = server.client
    config = cpu_config(startupTimeout=2, torchrun={"nproc-per-node": 2})
    started = time.perf_counter()
    with pytest.raises(LMServeError) as info:
        client.deploy("sluggish", handler_path("slow_init.py"), config=config, wait=True)
    assert info.value.status == 500 and "startupTimeout=2s" in info.value.message
    assert time.perf_counter() - started < 15
    assert client.describe("sluggish")["state"] == "failed"
    client.undeploy("sluggish")


def test_undeploy_while_starting_ends_everything_at_once(server):
    client = server.client
    config = cpu_config(torchrun={"nproc-per-node": 2})
    client.deploy("abandoned", handler_path("slow_init.py"), config=config, wait=False)
    pids = wait_until(lambda: len(rank_pids(client.describe("abandoned"))) == 2 and rank_pids(client.describe("abandoned")),
                      30, message="ranks to say hello")
    started = time.perf_counter()
    client.undeploy("abandoned")
    assert time.perf_counter() - started < 10
    wait_until(lambda: not any(alive(p) for p in pids), 10, message="ranks to end")
    assert all(m["name"] != "abandoned" for m in client.list())
