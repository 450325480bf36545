"""TorchServe handlers on a GPU: BaseHandler's default initialize on cuda, and the DeepSpeed idiom
(BaseDeepSpeedHandler + get_ds_engine) answering as greedy ``generate`` does, through /predictions.

    python -m pytest -q tests/gpu/test_torchserve_gpu.py
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import requests

from gpuutil import gpu_generate
from serverproc import running_server

HANDLERS = os.path.join(os.path.dirname(__file__), "torchserve_handlers")
PROMPTS = [{"input_ids": [42, 269, 78, 81, 277, 274, 273]}, {"input_ids": [5, 6, 7], "max_new_tokens": 4}]


def _predict(server, name, body):
    response = requests.post(f"{server.url}predictions/{name}", json=body, timeout=120,
                             headers={"Authorization": f"Bearer {server.token}"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.timeout(300)
def test_base_handler_loads_torchscript_on_the_gpu(tmp_path):
    import torch

    linear = torch.nn.Linear(3, 2)
    folder = tmp_path / "scripted"
    folder.mkdir()
    torch.jit.script(linear).save(str(folder / "model.pt"))
    shutil.copy(os.path.join(HANDLERS, "scripted_device.py"), folder / "scripted_device.py")
    (folder / "MAR-INF").mkdir()
    (folder / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(
        {"runtime": "python", "model": {"modelName": "scripted", "modelVersion": "1.0",
                                        "handler": "scripted_device.py", "serializedFile": "model.pt"}}))
    with running_server(str(tmp_path)) as server:
        described = server.client.deploy(archive=str(folder), config={"deviceType": "gpu"}, wait=True)
        assert described["state"] == "ready", server.log()
        answer = _predict(server, "scripted", [1.0, 2.0, 3.0])
    assert answer["device"] == "cuda:0"
    assert answer["y"] == pytest.approx(linear(torch.tensor([1.0, 2.0, 3.0])).tolist(), abs=1e-3)


@pytest.mark.timeout(300)
def test_deepspeed_idiom_equals_generate(models, tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed")
    model_dir = str(tmp_path / "llama")
    shutil.copytree(models["llama"], model_dir)
    with open(os.path.join(model_dir, "ds-config.json"), "w") as f:
        json.dump({"replace_with_kernel_inject": False, "tensor_parallel": {"tp_size": 1}, "dtype": "bfloat16"}, f)
    shutil.copy(os.path.join(HANDLERS, "ds_causal_lm.py"), model_dir)  # inside the server's allowed roots
    config = {"deviceType": "gpu", "torchrun": {"nproc-per-node": 1}, "deepspeed": {"config": "ds-config.json"},
              "handler": {"model_path": model_dir, "max_new_tokens": 7}}
    with running_server(str(tmp_path)) as server:
        described = server.client.deploy("dsts", "ds_causal_lm.py", model_dir=model_dir, config=config, wait=True)
        assert described["state"] == "ready", server.log()
        answers = [_predict(server, "dsts", prompt) for prompt in PROMPTS]
    assert answers == gpu_generate(models["llama"], batch=PROMPTS)
