"""A tp=2 group across two network-namespace hosts on one machine with two GPUs, one per host.

Host A (``lmjupyter serve --gpus 0``) and host B (``lmjupyter node --gpus 1``) as in
tests/nodes/test_multihost.py, but ``deviceType: gpu``: NCCL between the hosts, forced onto
its socket transport over the veth pair (no P2P, no shared memory), as between real hosts.
Needs root and at least two GPUs; run as ``python -m pytest -q tests/gpu/test_multihost_gpu.py``.
"""
from __future__ import annotations

import os
import sys

import pytest

from gpuutil import BATCH, MAX_NEW_TOKENS, gpu_generate

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "nodes"))
from twohosts import ADDRESS_A, ADDRESS_B, AGENT, two_hosts  # noqa: E402

pytestmark = pytest.mark.timeout(600)


def test_tp_across_two_hosts_on_two_gpus_answers_like_one_gpu(tmp_path, models):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs, one per host")
    env = {"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1", "NCCL_DEBUG": "INFO"}
    model_dir = models["llama"]
    config = {"deviceType": "gpu", "parallelType": "tp", "startupTimeout": 300,
              "torchrun": {"nnodes": 2, "nproc-per-node": 1},
              "handler": {"max_new_tokens": MAX_NEW_TOKENS, "dtype": "float32", "cuda_graphs": False}}
    with two_hosts(tmp_path, server_args=("--gpus", "0", "--allow-root", os.path.dirname(model_dir)),
                   agent_args=("--gpus", "1"), env=env) as hosts:
        described = hosts.call("deploy", "llama-2h", model_dir=model_dir, config=config, wait=True, timeout=400)
        ranks = described["workers"][0]["ranks"]
        assert [(r["rank"], r["address"], r["device"]) for r in ranks] == [
            (0, ADDRESS_A, "GPU 0"), (1, ADDRESS_B, "GPU 1")], hosts.logs()
        assert ranks[1]["node"] == AGENT
        answers = [hosts.call("predict", "llama-2h", item) for item in BATCH]
        assert [a["token_ids"] for a in answers] == gpu_generate(model_dir, dtype_name="float32")
        rank1_log = "\n".join(line for entry in hosts.call("logs", "llama-2h", rank=1) for line in entry["lines"])
        hosts.call("undeploy", "llama-2h")
    print(rank1_log[-3000:])  # NCCL's INFO lines: the transport it chose (NET/Socket over the veth)
