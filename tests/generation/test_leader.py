"""The continuous-batching leader in one process, on the tiny models: sampling, stops, logprobs, limits.

No server here: the test drives :class:`lmjupyter.generation.leader.Leader` the way the
worker's serve loop does (``add``, ``cancel``, ``step``) and reads the events it returns.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from lmjupyter.handlers.causal_lm import CausalLMHandler
from lmjupyter.worker.context import Context


def make_leader(model_dir, slots=4, **handler):
    ctx = Context(model_name="m", model_dir=str(model_dir),
                  model_yaml_config={"batchSize": slots, "handler": {"max_new_tokens": 8, **handler}})
    h = CausalLMHandler()
    h.initialize(ctx)
    assert h.generation is not None, h.per_batch_reason
    return h.generation.leader


def run(leader, requests: list, stream=True, max_steps=2000):
    """Add every request, step until all are answered; (status, answer) and partials per request."""
    answers, partials = {}, {i: [] for i in range(len(requests))}

    def take(events):
        for kind, rid, (status, _, body) in events:
            value = json.loads(body)
            if kind == "partial":
                partials[rid].append(value)
            else:
                answers[rid] = (status, value)

    for i, item in enumerate(requests):
        take(leader.add(i, item, stream))
    for _ in range(max_steps):
        if len(answers) == len(requests) and not leader.busy:  # busy: a step whose tokens are all dropped
            break
        take(leader.step())
    assert len(answers) == len(requests) and not leader.busy
    return [answers[i] for i in range(len(requests))], [partials[i] for i in range(len(requests))]


def hf(model_dir, ids, n):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids):].tolist(), model


SAMPLED = {"prompt": "Hello world", "max_new_tokens": 12, "temperature": 0.9, "top_p": 0.9, "seed": 7}


@pytest.mark.timeout(120)
def test_a_seed_gives_the_same_tokens_whatever_shares_the_batch(models):
    alone, _ = run(make_leader(models["llama"]), [SAMPLED])
    crowded, _ = run(make_leader(models["llama"], slots=2),
                     [{"prompt": "Once", "max_new_tokens": 5, "temperature": 1.0}, "xyz", SAMPLED, SAMPLED])
    assert alone[0][1]["token_ids"] == crowded[2][1]["token_ids"] == crowded[3][1]["token_ids"]
    other, _ = run(make_leader(models["llama"]), [dict(SAMPLED, seed=8)])
    assert other[0][1]["token_ids"] != alone[0][1]["token_ids"]


@pytest.mark.timeout(120)
def test_top_k_of_one_is_greedy_and_greedy_is_generate(models):
    leader = make_leader(models["gpt2"])
    item = {"prompt": "The quick brown fox", "max_new_tokens": 10}
    (greedy, k1), _ = run(leader, [item, dict(item, temperature=2.0, top_k=1)])
    tokenizer = leader.tokenizer
    assert greedy[1]["token_ids"] == k1[1]["token_ids"] == hf(models["gpt2"], tokenizer(item["prompt"])["input_ids"], 10)[0]


def test_sampled_tokens_follow_the_distribution():
    """Gumbel-max with hashed uniforms: frequencies match softmax(logits / T) (2000 rows, 4 tokens)."""
    from lmjupyter.generation.params import SamplingParams
    from lmjupyter.generation.sampler import BatchSampling, sample

    rows = 2000
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(rows, 1)
    params = [SamplingParams(1, temperature=1.0)] * rows
    settings = BatchSampling.build(params, list(range(rows)), "cpu")
    tokens = sample(logits, settings, torch.zeros(rows, dtype=torch.long))
    freq = torch.bincount(tokens, minlength=4).float() / rows
    expected = logits[0].softmax(-1)
    assert torch.allclose(freq, expected, atol=0.035), (freq, expected)
    cut = BatchSampling.build([SamplingParams(1, temperature=1.0, top_p=0.6)] * rows, list(range(rows)), "cpu")
    assert set(sample(logits, cut, torch.zeros(rows, dtype=torch.long)).tolist()) <= {0, 1}


@pytest.mark.timeout(120)
def test_stop_strings_cut_the_text_and_end_the_request(models):
    leader = make_leader(models["llama"])
    (_, full), = run(leader, [{"prompt": "Hello world", "max_new_tokens": 16}])[0]
    text = full["text"]
    stop = text[6:9]
    assert stop and text.find(stop) == 6
    (status, cut), = run(leader, [{"prompt": "Hello world", "max_new_tokens": 16, "stop": ["never", stop]}])[0]
    assert status == 200 and cut["text"] == text[:6] and cut["finish_reason"] == "stop"
    assert cut["token_ids"] == full["token_ids"][:len(cut["token_ids"])] and len(cut["token_ids"]) < 16
    _, [parts] = run(leader, [{"prompt": "Hello world", "max_new_tokens": 16, "stop": stop}])
    assert "".join(p["text"] for p in parts) == text[:6]


@pytest.mark.timeout(120)
def test_eos_ends_a_request_unless_it_is_ignored(models, tmp_path):
    import shutil

    model_dir = tmp_path / "eos"
    shutil.copytree(models["llama"], model_dir)
    probe = make_leader(model_dir)
    (_, free), = run(probe, [{"prompt": "Hello", "max_new_tokens": 12}])[0]
    eos = free["token_ids"][3]
    gen = json.loads((model_dir / "generation_config.json").read_text())
    gen["eos_token_id"] = eos
    (model_dir / "generation_config.json").write_text(json.dumps(gen))
    leader = make_leader(model_dir)
    ((_, stopped), (_, ignored)), _ = run(leader, [{"prompt": "Hello", "max_new_tokens": 12},
                                                   {"prompt": "Hello", "max_new_tokens": 12, "ignore_eos": True}])
    first = free["token_ids"].index(eos)
    assert stopped["token_ids"] == free["token_ids"][:first + 1] and stopped["finish_reason"] == "stop"
    assert ignored["token_ids"] == free["token_ids"] and ignored["finish_reason"] == "length"


@pytest.mark.timeout(120)
def test_logprobs_are_those_of_the_model(models):
    leader = make_leader(models["llama"])
    ids = leader.tokenizer("Hello world")["input_ids"]
    ((_, answer),), _ = run(leader, [{"input_ids": ids, "max_new_tokens": 3, "logprobs": 2}])
    _, model = hf(models["llama"], ids, 1)
    with torch.no_grad():
        logp = model(torch.tensor([ids + answer["token_ids"]])).logits[0].log_softmax(-1)
    for i, entry in enumerate(answer["logprobs"]):
        row = logp[len(ids) - 1 + i]
        assert entry["token_id"] == answer["token_ids"][i]
        assert math.isclose(entry["logprob"], float(row[entry["token_id"]]), abs_tol=1e-4)
        assert [t for t, _ in entry["top"]] == row.topk(2).indices.tolist()


@pytest.mark.timeout(120)
def test_bad_requests_are_answered_alone_with_the_field_named(models):
    leader = make_leader(models["llama"], max_seq_len=64)
    answers, _ = run(leader, [{"prompt": "x", "top_p": 0}, {"promt": "x"}, {"prompt": "x", "seed": "a"},
                              {"prompt": "tok " * 80}, {"prompt": "Hello", "max_new_tokens": 500},
                              {"prompt": "Hello", "max_new_tokens": 0}])
    assert [(s, a.get("error", {}).get("param")) for s, a in answers[:4]] == \
        [(400, "top_p"), (400, "promt"), (400, "seed"), (400, "prompt")]
    assert "limit" in answers[3][1]["error"]["message"]
    status, clipped = answers[4]
    assert status == 200 and clipped["finish_reason"] == "length"
    assert clipped["prompt_tokens"] + clipped["completion_tokens"] == 64
    assert answers[5] == (200, {"text": "", "token_ids": [], "finish_reason": "length",
                                "prompt_tokens": answers[5][1]["prompt_tokens"], "completion_tokens": 0})


@pytest.mark.timeout(120)
def test_chat_messages_use_the_chat_template(models):
    leader = make_leader(models["llama"])
    messages = [{"role": "user", "content": "hi there"}]
    ((status, answer),), _ = run(leader, [{"messages": messages, "max_new_tokens": 6}])
    ids = leader.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert status == 200 and answer["prompt_tokens"] == len(ids)
    assert answer["token_ids"] == hf(models["llama"], list(ids), 6)[0]


@pytest.mark.timeout(120)
def test_a_cancelled_request_gives_its_slot_to_the_next_at_once(models):
    leader = make_leader(models["llama"], slots=1)
    leader.add(1, {"prompt": "Hello", "max_new_tokens": 200, "ignore_eos": True}, True)
    for _ in range(3):
        leader.step()
    assert leader.cancel(1)[0][2][0] == 499
    leader.add(2, {"prompt": "Hello", "max_new_tokens": 2}, False)
    done = []
    for steps in range(1, 10):
        done += [rid for kind, rid, _ in leader.step() if kind == "done"]
        if done:
            break
    assert done == [2] and steps <= 4 and not leader.busy


@pytest.mark.timeout(120)
def test_handler_kernels_setting_is_checked(models):
    """``handler.kernels``: a wrong value, or Triton's kernels asked for where they cannot run (the CPU),
    fails the start with the reason; ``torch`` and ``auto`` start (auto falls back to torch here)."""
    with pytest.raises(ValueError, match=r"handler.kernels = 'fast': expected auto, torch or triton"):
        make_leader(models["llama"], kernels="fast")
    with pytest.raises(ValueError, match=r"handler.kernels = 'triton': the Triton kernels run on CUDA devices only"):
        make_leader(models["llama"], kernels="triton")
    for kernels in ("torch", "auto"):
        leader = make_leader(models["llama"], kernels=kernels)
        (status, answer), = run(leader, [{"prompt": "Hello", "max_new_tokens": 3}])[0]
        assert status == 200 and answer["completion_tokens"] == 3
