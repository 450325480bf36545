"""DeepSpeed-Inference (``deepspeed:`` section) on one GPU: tp_size 1, with and without kernel injection."""
from __future__ import annotations

import json
import shutil
import socket

import pytest

from gpuutil import BATCH, MAX_NEW_TOKENS, gpu_generate
from serverproc import running_server

deepspeed = pytest.importorskip("deepspeed", reason="deepspeed is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ds_model(src: str, dst, inject: bool):
    shutil.copytree(src, dst)
    (dst / "ds-config.json").write_text(json.dumps({"replace_with_kernel_inject": inject,
                                                    "tensor_parallel": {"tp_size": 1}}))
    return str(dst)


def in_process(model_dir, monkeypatch):
    from lmjupyter.handlers.causal_lm import CausalLMHandler
    from lmjupyter.worker.context import Context

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                       "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    config = {"deviceType": "gpu", "deepspeed": {"config": "ds-config.json"},
              "handler": {"max_new_tokens": MAX_NEW_TOKENS}}
    ctx = Context(model_name="ds", model_dir=model_dir, model_yaml_config=config, device="cuda:0")
    handler = CausalLMHandler()
    handler.initialize(ctx)
    return handler, ctx


@pytest.mark.timeout(300)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_init_inference_tp1_without_injection_equals_generate(models, tmp_path, monkeypatch, family):
    model_dir = ds_model(models[family], tmp_path / family, inject=False)
    handler, ctx = in_process(model_dir, monkeypatch)
    answers = handler.handle(BATCH, ctx)
    assert [a["token_ids"] for a in answers] == gpu_generate(models[family])


@pytest.mark.timeout(590)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_kernel_injection(models, tmp_path, monkeypatch, family):
    """Needs DeepSpeed's transformer_inference op, JIT-built with nvcc on first use (about a minute).

    The op builds once TORCH_CUDA_ARCH_LIST's '9.0a' is rewritten (it failed with
    "invalid literal for int() with base 10: '0a'" before). With DeepSpeed 0.19.8 and
    transformers 5.x the injected layers still do not run (GPT-2: the block's calling
    convention; GQA Llama: fused qkv of unequal sizes): then initialize must fail at once,
    naming the cause and the way out, and this test is an expected failure.
    """
    from lmjupyter.handlers.parallel.deepspeed import DeepSpeedUnavailable

    model_dir = ds_model(models[family], tmp_path / family, inject=True)
    try:
        handler, ctx = in_process(model_dir, monkeypatch)
    except DeepSpeedUnavailable as exc:
        message = str(exc)
        assert "invalid literal for int()" not in message, message
        assert "replace_with_kernel_inject" in message and "false" in message, message
        pytest.xfail(message[:400])
    answers = handler.handle(BATCH, ctx)
    expected = gpu_generate(models[family])
    got = [a["token_ids"] for a in answers]
    # fused kernels round differently from eager bf16: compare the first 3 tokens of each request
    assert [g[:3] for g in got] == [e[:3] for e in expected], (got, expected)


@pytest.mark.timeout(300)
def test_deepspeed_section_through_the_server(models, tmp_path):
    model_dir = ds_model(models["llama"], tmp_path / "llama-ds", inject=False)
    config = {"deviceType": "gpu", "minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "responseTimeout": 120,
              "torchrun": {"nproc-per-node": 1}, "deepspeed": {"config": "ds-config.json"},
              "handler": {"max_new_tokens": MAX_NEW_TOKENS}}
    with running_server(str(tmp_path)) as server:
        described = server.client.deploy("ds", model_dir=model_dir, config=config, wait=True)
        assert described["state"] == "ready", server.log()
        answers = [server.client.predict("ds", item) for item in BATCH]
        server.client.undeploy("ds")
    assert [a["token_ids"] for a in answers] == gpu_generate(models["llama"])
