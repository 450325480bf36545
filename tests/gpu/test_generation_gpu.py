"""The continuous-batching engine on a GPU: CUDA graphs over the slot cache, fp32 and bf16.

fp32: greedy tokens equal HF ``generate`` exactly, alone and with requests joining and
leaving the running batch. bf16 (random weights make near-ties): teacher-forced logits of
the captured decode step stay within a tolerance of HF's, and greedy tokens agree up to
the first step where HF's top-2 margin is below that tolerance.
"""
from __future__ import annotations

import json

import pytest
import torch

from lmjupyter.handlers.causal_lm import CausalLMHandler
from lmjupyter.worker.context import Context

BF16_TOLERANCE = 0.15   # max |logit difference|, for logits of order 1-10 (bf16 keeps ~3 digits)


def leader_on_gpu(model_dir, dtype, slots=4, **handler):
    ctx = Context(model_name="m", model_dir=str(model_dir), device="cuda:0",
                  model_yaml_config={"deviceType": "gpu", "batchSize": slots, "handler": {"dtype": dtype, **handler}})
    handler = CausalLMHandler()
    handler.initialize(ctx)
    assert handler.generation is not None and handler.generation.executor.graphs is not None
    return handler


def hf_model(model_dir, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to("cuda:0").eval()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fp32_tokens_equal_generate_while_requests_join_and_leave(models, family):
    handler = leader_on_gpu(models[family], "float32")
    leader, tokenizer = handler.generation.leader, handler.tokenizer
    model = hf_model(models[family], "float32")
    items = [{"prompt": p, "max_new_tokens": n} for p, n in
             [("Hello", 40), ("The quick brown fox", 5), ("Once upon a time", 25), ("0123", 12), ("A", 33)]]
    answers, steps = {}, 0
    pending = list(enumerate(items))
    while len(answers) < len(items) or leader.busy:
        if pending and steps % 4 == 0:
            rid, item = pending.pop(0)
            leader.add(rid, item, stream=False)
        for kind, rid, (_, _, body) in leader.step():
            answers[rid] = json.loads(body)
        steps += 1
        assert steps < 2000
    for rid, item in enumerate(items):
        ids = tokenizer(item["prompt"])["input_ids"]
        out = model.generate(torch.tensor([ids], device="cuda:0"), max_new_tokens=item["max_new_tokens"], do_sample=False)
        assert answers[rid]["token_ids"] == out[0, len(ids):].tolist(), item
    assert not handler.generation.executor.graphs.failed


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_bf16_decode_logits_stay_close_to_hf(tmp_path, kernels):
    from lmjupyter.generation.plan import Chunk, StepPlan
    from lmjupyter.generation.scheduler import bucket
    from lmjupyter.models.tiny import build_tiny_llama

    model_dir = build_tiny_llama(tmp_path / "mid", num_layers=4, hidden=512, heads=8, kv_heads=2, init_std=0.02,
                                 vocab=2048)
    handler = leader_on_gpu(model_dir, "bfloat16", kernels=kernels)
    executor = handler.generation.executor
    assert executor.model.regions.triton == (kernels == "triton")
    model = hf_model(model_dir, "bfloat16")
    prompt = handler.tokenizer("Once upon a time there was a tiny model")["input_ids"]
    steps = 48
    out = model.generate(torch.tensor([prompt], device="cuda:0"), max_new_tokens=steps, do_sample=False,
                         output_scores=True, return_dict_in_generate=True)
    hf_tokens = out.sequences[0, len(prompt):].tolist()
    with torch.no_grad():
        hf_logits = model(out.sequences).logits[0, len(prompt) - 1:-1].float()   # teacher-forced, per step
    executor.run(StepPlan(chunks=[Chunk(0, 0, prompt, True)]))     # prefill: our token 0
    ours, diffs = [int(executor.last_token[0])], []
    for i in range(steps - 1):
        executor.last_token[0] = hf_tokens[i]          # teacher forcing: HF's token i goes in at P + i
        logits = executor.graphs.run(1, bucket(len(prompt) + i + 1, executor.model.cache.max_len, 64))[0].float()
        ours.append(int(logits.argmax()))
        diffs.append(float((logits - hf_logits[i + 1]).abs().max()))
        executor.position[0] += 1
    assert max(diffs) < BF16_TOLERANCE, diffs
    top2 = hf_logits.topk(2, -1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    agree_until = next((i for i, m in enumerate(margins) if m < BF16_TOLERANCE), steps)
    assert ours[:agree_until] == hf_tokens[:agree_until], (agree_until, diffs[:agree_until])
    print(f"bf16, {kernels} kernels: max |logit diff| {max(diffs):.4f}; tokens agree for {agree_until} steps "
          "(HF margin >= tol)")


SHAPES_DIR = __import__("os").environ.get("LMJ_SHAPES_DIR")


@pytest.mark.timeout(900)
@pytest.mark.skipif(not SHAPES_DIR, reason="set LMJ_SHAPES_DIR to a folder holding llama-1.1b/ and llama-8b/ "
                                            "(benchmarks/gpu/generation_bench.py builds them)")
@pytest.mark.parametrize("shape", ["1.1b", "8b"])
def test_fp32_real_shapes_equal_generate_alone_and_in_a_busy_batch(shape):
    """The 1.1B and 8B shapes in fp32 (their bf16 weights cast up, on both sides): greedy tokens equal
    generate, for a request alone and for the same request among others that join and leave."""
    import os

    model_dir = os.path.join(SHAPES_DIR, f"llama-{shape}")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        pytest.skip(f"{model_dir} was not built")
    model = hf_model(model_dir, "float32")
    prompts = [[5 + (7 * i + 3 * j) % 300 for j in range(16)] for i in range(3)]
    expected = [model.generate(torch.tensor([p], device="cuda:0"), max_new_tokens=32, do_sample=False,
                               min_new_tokens=32)[0, 16:].tolist() for p in prompts]
    del model
    torch.cuda.empty_cache()
    handler = leader_on_gpu(model_dir, "float32", slots=4)
    leader = handler.generation.leader
    alone = {}
    leader.add(0, {"input_ids": prompts[0], "max_new_tokens": 32}, stream=False)
    while leader.busy:
        alone.update({rid: json.loads(body) for kind, rid, (_, _, body) in leader.step() if kind == "done"})
    assert alone[0]["token_ids"] == expected[0]
    busy, steps = {}, 0
    pending = [(i + 1, {"input_ids": p, "max_new_tokens": 32}) for i, p in enumerate(prompts)]
    pending.insert(1, (9, {"input_ids": prompts[2][:5], "max_new_tokens": 7}))   # a short one that leaves early
    while pending or leader.busy:
        if pending and steps % 5 == 0:
            rid, item = pending.pop(0)
            leader.add(rid, item, stream=False)
        busy.update({rid: json.loads(body) for kind, rid, (_, _, body) in leader.step() if kind == "done"})
        steps += 1
    assert [busy[i + 1]["token_ids"] for i in range(3)] == expected
