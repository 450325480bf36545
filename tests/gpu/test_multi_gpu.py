"""Runs that need several GPUs (issue 16): tp, pp and pptp over NCCL, the GPU rule on real devices,
and a rank killed mid-generation. Each test skips, with the reason, where fewer GPUs are visible.

    python3 -m pytest tests/gpu/test_multi_gpu.py -q -rs     # on a machine with 2 (or 4) GPUs
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time

import pytest

from gpuutil import BATCH, MAX_NEW_TOKENS, gpu_generate
from serverproc import running_server, wait_until


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def needs(n: int):
    return pytest.mark.skipif(gpu_count() < n, reason=f"needs {n} GPUs, {gpu_count()} visible")


def config(parallel: str | None, nproc: int, dtype: str = "float32", **extra) -> dict:
    out = {"deviceType": "gpu", "minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "responseTimeout": 120,
           "torchrun": {"nproc-per-node": nproc}, "handler": {"max_new_tokens": MAX_NEW_TOKENS, "dtype": dtype},
           **extra}
    if parallel:
        out["parallelType"] = parallel
    return out


@needs(2)
@pytest.mark.timeout(600)
@pytest.mark.parametrize("parallel,nproc", [("tp", 2), ("pp", 2), pytest.param("pptp", 4, marks=needs(4))])
def test_nccl_groups_give_the_single_gpu_tokens_while_requests_join(tmp_path, models, parallel, nproc):
    """fp32 greedy tokens of each request equal generate alone, with requests arriving together and
    one joining mid-flight (continuous batching across the ranks)."""
    expected = gpu_generate(models["llama"], dtype_name="float32")
    with running_server(str(tmp_path), "--allow-root", str(tmp_path.parent)) as server:
        client = server.client
        described = client.deploy("m", model_dir=models["llama"], config=config(parallel, nproc), wait=True)
        assert described["state"] == "ready", server.log()
        assert described["workers"][0]["devices"] == ",".join(map(str, range(nproc)))
        with concurrent.futures.ThreadPoolExecutor(len(BATCH)) as pool:
            answers = list(pool.map(lambda item: client.predict("m", item), BATCH))
        assert [a["token_ids"] for a in answers] == expected
        stream = client.stream("m", {"prompt": "Hello", "max_new_tokens": 60, "ignore_eos": True})
        next(stream)
        joined = client.predict("m", BATCH[1])          # joins the running stream's batch
        assert joined["token_ids"] == expected[1]
        rest = list(stream)
        assert len(rest) == 59
        client.undeploy("m")


@needs(2)
@pytest.mark.timeout(300)
def test_the_gpu_rule_on_real_devices(tmp_path):
    """2 workers x 1 rank on 2 GPUs: each rank sees its own GPU (nvidia-smi's UUID); a third is refused."""
    from test_serve_gpu import WHERE_AM_I, smi_uuids

    (tmp_path / "where.py").write_text(WHERE_AM_I)
    with running_server(str(tmp_path), "--gpus", "0,1") as server:
        client = server.client
        cfg = {"deviceType": "gpu", "minWorkers": 2, "maxWorkers": 3, "batchSize": 1,
               "torchrun": {"nproc-per-node": 1}}
        described = client.deploy("where", handler="where.py", config=cfg, wait=True)
        assert sorted(w["devices"] for w in described["workers"]) == ["0", "1"]
        seen = set()
        for _ in range(20):
            answer = client.predict("where", {"x": 1})
            seen.add((answer["CUDA_VISIBLE_DEVICES"], answer["uuid"].removeprefix("GPU-")))
        uuids = [u.removeprefix("GPU-") for u in smi_uuids()]
        assert seen == {("0", uuids[0]), ("1", uuids[1])}
        from lmjupyter.client import LMServeError

        with pytest.raises(LMServeError) as refused:
            client.scale("where", 3)
        assert refused.value.status == 400 and "where" in refused.value.message
        client.undeploy("where")


@needs(2)
@pytest.mark.timeout(400)
def test_a_rank_killed_mid_generation_on_gpus_fails_fast_and_the_group_returns(tmp_path, models):
    from lmjupyter.client import LMServeError

    with running_server(str(tmp_path), "--allow-root", str(tmp_path.parent)) as server:
        client = server.client
        described = client.deploy("m", model_dir=models["llama"], config=config("tp", 2), wait=True)
        victim = described["workers"][0]["ranks"][1]["pid"]
        stream = client.stream("m", {"prompt": "Hello", "max_new_tokens": 200, "ignore_eos": True})
        next(stream)
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(LMServeError) as failure:
            for _ in stream:
                pass
        assert failure.value.status == 502 and time.monotonic() - started < 15
        wait_until(lambda: client.describe("m")["workers"][0]["state"] == "ready", timeout=180,
                   message="the group restarted on the same GPUs")
        assert client.describe("m")["workers"][0]["devices"] == "0,1"
        assert client.predict("m", BATCH[0])["token_ids"]
        client.undeploy("m")
    held = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30).stdout.split()
    assert str(victim) not in held, "a dead rank still holds GPU memory"
