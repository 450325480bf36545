"""deviceType gpu, nproc 1, through a real ``lmjupyter serve``: tokens and the rank's GPU."""
from __future__ import annotations

import concurrent.futures
import subprocess
import textwrap

import pytest

from gpuutil import BATCH, MAX_NEW_TOKENS, gpu_generate
from serverproc import running_server

# fp32: exact greedy equality with generate (bf16 is checked against HF logits in test_generation_gpu.py)
GPU_CONFIG = {"deviceType": "gpu", "minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "responseTimeout": 120,
              "torchrun": {"nproc-per-node": 1}, "handler": {"max_new_tokens": MAX_NEW_TOKENS, "dtype": "float32"}}

WHERE_AM_I = textwrap.dedent('''
    import os
    import sys
    import torch
    from lmjupyter.handlers import BaseHandler

    class WhereAmI(BaseHandler):
        def initialize(self, ctx):
            self.device = ctx.device
            self.initialized = True

        def inference(self, batch):
            props = torch.cuda.get_device_properties(0)
            x = torch.ones(4, device=self.device)
            return [{"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                     "device_count": torch.cuda.device_count(),
                     "current_device": torch.cuda.current_device(),
                     "ctx_device": self.device, "tensor_device": str(x.device),
                     "uuid": str(props.uuid), "name": props.name,
                     # a process forked from the fork server has its main module; a new interpreter not
                     "forked": getattr(sys.modules["__main__"].__spec__, "name", None)
                               == "lmjupyter.worker.forkserver"} for _ in batch]
''')


def smi_uuids() -> list[str]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return [line.split(",")[1].strip() for line in out.strip().splitlines()]


@pytest.mark.timeout(300)
def test_llama_and_gpt2_through_the_server_equal_generate(tmp_path, models):
    expected = {name: gpu_generate(models[name], dtype_name="float32") for name in ("llama", "gpt2")}
    with running_server(str(tmp_path), "--allow-root", str(tmp_path.parent)) as server:
        client = server.client
        for name in ("llama", "gpt2"):   # one GPU: one model at a time
            described = client.deploy(name, model_dir=models[name], config=GPU_CONFIG, wait=True)
            assert described["state"] == "ready", server.log()
            assert [w["devices"] for w in described["workers"]] == ["0"]
            with concurrent.futures.ThreadPoolExecutor(len(BATCH)) as pool:
                answers = list(pool.map(lambda item: client.predict(name, item), BATCH))
            assert [a["token_ids"] for a in answers] == expected[name], name
            partials, final = client.predict_stream(name, BATCH[3])
            assert [p["token_id"] for p in partials if p is not None] == final["token_ids"] == expected[name][3]
            client.undeploy(name)


@pytest.mark.timeout(180)
def test_the_rank_sees_the_gpu_the_rule_gives_when_forked(tmp_path):
    (tmp_path / "where.py").write_text(WHERE_AM_I)
    with running_server(str(tmp_path)) as server:
        client = server.client
        config = {"deviceType": "gpu", "minWorkers": 1, "maxWorkers": 1, "torchrun": {"nproc-per-node": 1}}
        described = client.deploy("where", handler="where.py", config=config, wait=True)
        assert described["state"] == "ready", server.log()
        answer = client.predict("where", {"x": 1})
        launcher = client.health()["launcher"]
        client.undeploy("where")
    # the default start path: the rank was forked (from the fork server's agent) and still has CUDA
    assert launcher["kind"] == "fork-server" and launcher["state"] == "ready", launcher
    assert launcher["forked"] == 1 and answer["forked"], (launcher, answer)
    assert described["workers"][0]["devices"] == "0"
    assert answer["CUDA_VISIBLE_DEVICES"] == "0"
    assert answer["device_count"] == 1 and answer["current_device"] == 0
    assert answer["ctx_device"] == "cuda:0" and answer["tensor_device"] == "cuda:0"
    physical = smi_uuids()[0]                      # nvidia-smi index 0: "GPU-xxxxxxxx-..."
    assert physical.removeprefix("GPU-") == answer["uuid"].removeprefix("GPU-"), (physical, answer)
