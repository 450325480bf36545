"""Part 5 of issue 13 on a GPU: CUDA out-of-memory inside a handler fails that batch only and the
worker lives; a request that does not fit the KV cache held on the GPU is a 400 naming the limit;
a rank hung in an NCCL collective is caught by responseTimeout and its group replaced (2+ GPUs).

    python -m pytest -q tests/gpu/test_gpu_faults.py     # skipped without CUDA
"""
from __future__ import annotations

import concurrent.futures
import time

import pytest
import requests

from serverproc import alive, handler_path, rank_pids, running_server, wait_until

pytestmark = pytest.mark.timeout(300)


def post(server, model, body):
    return requests.post(server.url + f"lmserve/api/models/{model}/predict", json=body, timeout=120,
                         headers={"Authorization": f"token {server.token}"})


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def test_cuda_oom_in_a_handler_fails_that_batch_only_and_the_worker_lives(tmp_path):
    with running_server(str(tmp_path)) as server:
        config = {"deviceType": "gpu", "batchSize": 1, "torchrun": {"nproc-per-node": 1}}
        pids = rank_pids(server.client.deploy("oom", handler_path("oom.py"), config=config, wait=True))
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda body: post(server, "oom", body), [{}, {"oom": True}, {}, {}] * 3))
        for body, answer in zip([{}, {"oom": True}, {}, {}] * 3, answers):
            if body:
                assert answer.status_code == 500 and "OutOfMemoryError" in answer.json()["error"]["message"]
            else:
                assert answer.status_code == 200 and answer.json()["ok"] == 1024.0, answer.text
        assert rank_pids(server.client.describe("oom")) == pids  # not restarted
        assert all(post(server, "oom", {}).status_code == 200 for _ in range(5))  # the memory came back


def test_a_request_that_does_not_fit_the_gpu_kv_cache_is_a_400_naming_the_limit(tmp_path):
    with running_server(str(tmp_path)) as server:
        config = {"deviceType": "gpu", "batchSize": 4, "torchrun": {"nproc-per-node": 1},
                  "handler": {"kv_tokens": 4096, "width": 4096}}  # 64 MiB of cache on the GPU
        described = server.client.deploy("kv", handler_path("kv_budget.py"), config=config, wait=True)
        assert described["workers"][0]["devices"] == "0"
        refused = post(server, "kv", {"prompt_tokens": 4000, "max_new_tokens": 100})
        assert refused.status_code == 400 and "4096 tokens (handler.kv_tokens)" in refused.json()["error"]["message"]
        assert post(server, "kv", {"prompt_tokens": 4000, "max_new_tokens": 96}).json()["tokens"] == 4096
        assert rank_pids(server.client.describe("kv")) == rank_pids(described)


@pytest.mark.skipif("gpu_count() < 2", reason="an NCCL collective needs two GPUs")
def test_a_rank_hung_in_an_nccl_collective_is_caught_by_response_timeout(tmp_path):
    with running_server(str(tmp_path)) as server:
        config = {"deviceType": "gpu", "responseTimeout": 5, "torchrun": {"nproc-per-node": 2}}
        old = rank_pids(server.client.deploy("coll", handler_path("collective.py"), config=config, wait=True))
        assert post(server, "coll", {}).json()["sum"] == 2
        started = time.monotonic()
        hung = post(server, "coll", {"hang": True})
        assert hung.status_code == 504 and time.monotonic() - started < 30
        wait_until(lambda: not any(alive(p) for p in old), 30, message="the hung group to be killed")
        wait_until(lambda: post(server, "coll", {}).status_code == 200, 120, interval=1, message="a new group")
        assert not set(rank_pids(server.client.describe("coll"))) & set(old)


def test_the_built_in_handler_refuses_a_prompt_longer_than_its_context_on_gpu(tmp_path, models):
    with running_server(str(tmp_path), "--allow-root", str(tmp_path.parent)) as server:
        config = {"deviceType": "gpu", "batchSize": 2, "torchrun": {"nproc-per-node": 1}}
        server.client.deploy("ctx", model_dir=models["llama"], config=config, wait=True)
        too_long = post(server, "ctx", {"input_ids": [5] * 100_000, "max_new_tokens": 4})
        assert too_long.status_code == 400, too_long.text
        assert post(server, "ctx", {"input_ids": [5, 6], "max_new_tokens": 3}).status_code == 200
