"""Continuous batching through a real ``lmjupyter serve``: requests join and leave a running batch.

Every answer is compared with Hugging Face ``generate`` run on that request alone
(greedy, fp32), in each parallel mode, on real torchrun groups (gloo).
"""
from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import threading
import time

import pytest

from lmjupyter.client import LMServeError
from serverproc import ServerProcess, cpu_config, rank_pids, wait_until

LONG = {"prompt": "Once upon a time there was", "max_new_tokens": 100, "ignore_eos": True}
SHORT = {"prompt": "Hello world", "max_new_tokens": 4}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tinyset import build_model_set

    root = tmp_path_factory.mktemp("gen")
    models = build_model_set(root)
    server = ServerProcess(str(root))
    yield server, models
    server.stop()


_references: dict = {}


def generate_alone(model_dir: str, item: dict) -> list[int]:
    """Greedy ``generate`` of one request, alone and unpadded (eos ignored when the request says so).
    Greedy tokens under a smaller budget are a prefix of those under a larger one, so one run per
    prompt (at the largest budget asked so far) answers them all."""
    key = (model_dir, item.get("prompt"), tuple(item.get("input_ids") or ()), bool(item.get("ignore_eos")))
    cached = _references.get(key)
    if cached is None or cached[0] < item["max_new_tokens"]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        ids = item.get("input_ids") or tokenizer(item["prompt"])["input_ids"]
        extra = {"eos_token_id": None} if item.get("ignore_eos") else {}
        budget = max(item["max_new_tokens"], 64)
        out = model.generate(torch.tensor([ids]), max_new_tokens=budget, do_sample=False, **extra)
        cached = _references[key] = (budget, out[0, len(ids):].tolist())
    return cached[1][:item["max_new_tokens"]]


def deploy(client, name, model_dir, parallel=None, nproc=1, **config):
    extra = {"parallelType": parallel} if parallel else {}
    described = client.deploy(name, model_dir=model_dir, wait=True,
                              config=cpu_config(torchrun={"nproc-per-node": nproc}, responseTimeout=60, **extra,
                                                **config))
    assert described["state"] == "ready"
    assert described["workers"][0]["slots"]["total"] == config.get("batchSize", 16)
    return described


def metric(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$', text, re.M)
    assert match, f"{name} for {model} not in /metrics"
    return float(match.group(1))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("family,parallel,nproc", [
    ("llama", None, 1), ("llama", "tp", 2), ("llama", "pp", 2), ("llama", "pptp", 4),
    ("gpt2", "tp", 2), ("llama_tied", "pp", 2),
])
def test_a_short_request_joins_a_long_one_and_finishes_first(setup, family, parallel, nproc):
    server, models = setup
    client, name = server.client, f"{family}-{parallel or 'single'}"
    deploy(client, name, models[family], parallel, nproc, batchSize=4)
    done: dict[str, float] = {}
    long_partials: list = []
    started = threading.Event()

    def stream_long():
        stream = client.stream(name, LONG)
        try:
            while True:
                long_partials.append(next(stream))
                if len(long_partials) == 3:
                    started.set()
        except StopIteration as stop:
            done["long"] = time.monotonic()
            return stop.value

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(stream_long)
        assert started.wait(60), "the long request streamed no tokens"
        short = client.predict(name, SHORT)
        done["short"] = time.monotonic()
        long = future.result(timeout=120)
    assert done["short"] < done["long"], "the short request waited for the long one"
    assert short["token_ids"] == generate_alone(models[family], SHORT)
    assert long["token_ids"] == generate_alone(models[family], LONG)
    assert [p["token_id"] for p in long_partials] == long["token_ids"]
    assert "".join(p["text"] for p in long_partials) == long["text"]
    assert long["finish_reason"] == "length" and long["completion_tokens"] == LONG["max_new_tokens"]
    client.undeploy(name)


@pytest.mark.timeout(240)
def test_mixed_lengths_fill_every_slot_and_stay_correct(setup):
    server, models = setup
    client, name = server.client, "mixed"
    deploy(client, name, models["llama"], batchSize=8)
    prompts = ["Hello", "The quick brown fox", "A model too large for one GPU", "0123456789", "Once upon a time",
               "Jupyter notebooks drive the server"]
    # budgets long enough that the first requests still run when the eighth arrives
    items = [{"prompt": prompts[i % len(prompts)], "max_new_tokens": 30 + (i * 7) % 40} for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda item: client.predict(name, item), items))
    for item, answer in zip(items, answers):
        assert answer["token_ids"] == generate_alone(models["llama"], item), item
        assert answer["prompt_tokens"] > 0 and answer["completion_tokens"] == len(answer["token_ids"])
    text = client.metrics()
    assert metric(text, "lmjupyter_sequences_running_peak", name) == 8
    assert metric(text, "lmjupyter_kv_slots_used", name) == 0
    assert metric(text, "lmjupyter_generated_tokens_total", name) == sum(len(a["token_ids"]) for a in answers)
    assert client.describe(name)["sequences"] == {"running": 0, "waiting": 0, "slots": 8}
    client.undeploy(name)


@pytest.mark.timeout(240)
def test_a_client_that_disconnects_frees_its_slot(setup):
    """One slot: a long stream is dropped after a few tokens; the next request gets the slot at once,
    and the dropped one stops generating (its budget would otherwise have run to the end)."""
    server, models = setup
    client, name = server.client, "one-slot"
    deploy(client, name, models["llama"], batchSize=1)
    budget = 220
    stream = client.stream(name, {"prompt": "Hello", "max_new_tokens": budget, "ignore_eos": True})
    for _ in range(3):
        next(stream)
    stream.close()   # closes the HTTP response: the server sees the client go away
    answer = client.predict(name, SHORT)
    assert answer["token_ids"] == generate_alone(models["llama"], SHORT)
    text = wait_until(lambda: (t := client.metrics()) and metric(t, "lmjupyter_cancelled_requests_total", name) == 1
                      and t, timeout=10, message="the cancel counted")
    assert metric(text, "lmjupyter_generated_tokens_total", name) < budget, "the dropped request ran on"
    assert metric(text, "lmjupyter_kv_slots_used", name) == 0
    client.undeploy(name)


@pytest.mark.timeout(240)
def test_a_rank_killed_mid_step_fails_the_running_requests_and_the_worker_returns(setup):
    server, models = setup
    client, name = server.client, "killed"
    described = deploy(client, name, models["llama"], "tp", 2, batchSize=4)
    stream = client.stream(name, {"prompt": "Hello", "max_new_tokens": 200, "ignore_eos": True})
    next(stream)
    victim = rank_pids(described)[1]
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(LMServeError) as failure:
        for _ in stream:
            pass
    assert failure.value.status == 502 and "exited" in failure.value.message
    assert time.monotonic() - started < 10
    wait_until(lambda: client.describe(name)["workers"][0]["state"] == "ready", timeout=90,
               message="the worker group restarted")
    assert victim not in rank_pids(client.describe(name))
    assert client.predict(name, SHORT)["token_ids"] == generate_alone(models["llama"], SHORT)
    client.undeploy(name)
