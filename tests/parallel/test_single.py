"""CausalLMHandler in one process on its per-batch path (``continuousBatching: false``): requests,
batching, streaming, stops, errors. tests/generation covers the continuous path."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from ranks import BATCH, MAX_NEW_TOKENS, REPO, hf_generate, request_ids
from lmjupyter.handlers.causal_lm import CausalLMHandler
from lmjupyter.worker.context import Context


def make_handler(model_dir, config=None, streamed=None):
    config = {"continuousBatching": False, **(config or {"handler": {"max_new_tokens": MAX_NEW_TOKENS}})}
    ctx = Context(model_name="m", model_dir=str(model_dir), model_yaml_config=config,
                  _send_intermediate=streamed.append if streamed is not None else None)
    handler = CausalLMHandler()
    handler.initialize(ctx)
    return handler, ctx


@pytest.mark.timeout(60)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_greedy_equals_generate_and_stream(models, reference, family):
    streamed = []
    handler, ctx = make_handler(models[family], streamed=streamed)
    answers = handler.handle(BATCH, ctx)
    assert [a["token_ids"] for a in answers] == reference[family]
    assert handler.output_rank(ctx) == 0
    for i, answer in enumerate(answers):
        partials = [step[i] for step in streamed if step[i] is not None]
        assert [p["token_id"] for p in partials] == answer["token_ids"]
        assert "".join(p["text"] for p in partials) == answer["text"]
        assert answer["text"] == handler.tokenizer.decode(answer["token_ids"], skip_special_tokens=True)


@pytest.mark.timeout(60)
def test_request_forms(models, reference):
    handler, ctx = make_handler(models["llama"])
    prompt = BATCH[0]
    as_dict = handler.handle([{"prompt": prompt}], ctx)[0]
    assert handler.handle([prompt], ctx)[0] == as_dict
    assert handler.handle([prompt.encode()], ctx)[0] == as_dict
    assert as_dict["token_ids"] == reference["llama"][0]
    ids = handler.tokenizer(prompt)["input_ids"]
    assert handler.handle([{"input_ids": ids}], ctx)[0] == as_dict
    empty = handler.handle([{"prompt": prompt, "max_new_tokens": 0}], ctx)[0]
    assert (empty["text"], empty["token_ids"], empty["completion_tokens"]) == ("", [], 0)


@pytest.mark.timeout(60)
def test_stops_at_eos_while_others_go_on(models, tmp_path):
    """Make a token the model emits early the eos; that row stops, the rest continue."""
    first = hf_generate(models["llama"], [BATCH[1]])[0]
    eos = first[2]
    model_dir = tmp_path / "llama-eos"
    shutil.copytree(models["llama"], model_dir)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    gen["eos_token_id"] = eos
    (model_dir / "generation_config.json").write_text(json.dumps(gen))
    handler, ctx = make_handler(model_dir)
    answers = handler.handle(BATCH, ctx)
    expected = hf_generate(str(model_dir))
    assert [a["token_ids"] for a in answers] == expected
    assert answers[1]["token_ids"][-1] == eos and len(answers[1]["token_ids"]) <= 3
    assert any(len(a["token_ids"]) > 3 for a in answers)


@pytest.mark.timeout(60)
def test_sampled_rows_do_not_disturb_greedy_rows(models, reference):
    handler, ctx = make_handler(models["gpt2"])
    batch = list(BATCH)
    batch[0] = {"prompt": BATCH[0], "temperature": 5.0, "max_new_tokens": 12}
    answers = handler.handle(batch, ctx)
    assert [a["token_ids"] for a in answers[1:]] == reference["gpt2"][1:]
    sampled = answers[0]["token_ids"]
    assert len(sampled) == 12 and all(0 <= t < handler.config.vocab_size for t in sampled)


@pytest.mark.timeout(60)
def test_max_length_keeps_the_last_tokens(models):
    handler, ctx = make_handler(models["llama"], {"handler": {"max_length": 4, "max_new_tokens": 5}})
    long_prompt = BATCH[1]["prompt"]
    ids = handler.tokenizer(long_prompt)["input_ids"]
    assert len(ids) > 4
    got = handler.handle([long_prompt], ctx)[0]["token_ids"]
    assert got == hf_generate(models["llama"], [{"input_ids": ids[-4:], "max_new_tokens": 5}])[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad,param", [({"text": "x"}, "text"), ({"prompt": 3}, "prompt"), (42, None),
                                       ({"prompt": ""}, "prompt"), ({"prompt": "x", "top_p": 0.5}, "top_p")])
def test_malformed_requests_are_refused_alone(models, bad, param):
    from lmjupyter.handlers import RequestError

    handler, ctx = make_handler(models["gpt2"])
    refused, answered = handler.handle([bad, "Hello"], ctx)
    assert isinstance(refused, RequestError) and refused.param == param
    assert answered["token_ids"]


@pytest.mark.timeout(60)
def test_deepspeed_says_why_it_cannot_run(models, tmp_path):
    from lmjupyter.handlers.parallel.deepspeed import DeepSpeedUnavailable

    model_dir = tmp_path / "ds"
    shutil.copytree(models["llama"], model_dir)
    config = {"deepspeed": {"config": "ds-config.json"}}
    with pytest.raises(FileNotFoundError, match="ds-config.json"):
        make_handler(model_dir, config)
    (model_dir / "ds-config.json").write_text(json.dumps({"replace_with_kernel_inject": False}))
    with pytest.raises(DeepSpeedUnavailable, match="CUDA|deepspeed package"):
        make_handler(model_dir, config)


@pytest.mark.timeout(60)
def test_unknown_parallel_type_is_refused(models):
    with pytest.raises(ValueError, match="parallelType"):
        make_handler(models["llama"], {"parallelType": "dp"})


@pytest.mark.timeout(60)
def test_tiny_cli_builds_a_loadable_folder(tmp_path):
    out = tmp_path / "cli-gpt2"
    subprocess.run([sys.executable, "-m", "lmjupyter.models.tiny", str(out), "--family", "gpt2", "--layers", "1"],
                   check=True, cwd=REPO, capture_output=True, timeout=60)
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(out).n_layer == 1
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>"
    assert (out / "model.safetensors").exists()


def test_layer_split_is_contiguous_and_front_loaded():
    from lmjupyter.handlers.parallel.sharded import split_layers

    assert split_layers(3, 2) == [(0, 2), (2, 3)]
    assert split_layers(7, 3) == [(0, 3), (3, 5), (5, 7)]
    with pytest.raises(ValueError):
        split_layers(2, 3)


@pytest.mark.timeout(120)
@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_on_gpu_in_bfloat16_equals_generate(models, family):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = {"deviceType": "gpu", "continuousBatching": False,
              "handler": {"max_new_tokens": MAX_NEW_TOKENS, "dtype": "bfloat16"}}
    ctx = Context(model_name="m", model_dir=models[family], model_yaml_config=config, device="cuda:0")
    handler = CausalLMHandler()
    handler.initialize(ctx)
    answers = handler.handle(BATCH, ctx)
    tokenizer = AutoTokenizer.from_pretrained(models[family])
    model = AutoModelForCausalLM.from_pretrained(models[family], dtype=torch.bfloat16).to("cuda:0").eval()
    for item, answer in zip(BATCH, answers):
        ids, n = request_ids(tokenizer, item)
        out = model.generate(torch.tensor([ids], device="cuda:0"), max_new_tokens=n, do_sample=False)
        assert answer["token_ids"] == out[0, len(ids):].tolist()
