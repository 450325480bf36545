"""End to end: a Llama folder deployed with no handler, tp=2, through a real ``lmjupyter serve``, on the
per-batch path (``continuousBatching: false``; tests/generation covers continuous batching)."""
from __future__ import annotations

import concurrent.futures
import re

import pytest

from ranks import BATCH, MAX_NEW_TOKENS
from serverproc import cpu_config, running_server


@pytest.mark.timeout(240)
def test_builtin_handler_tp2_through_the_server(tmp_path, reference):
    from lmjupyter.models.tiny import build_tiny_llama

    root = tmp_path / "serve"
    root.mkdir()
    model_dir = build_tiny_llama(root / "llama", num_layers=3, hidden=64, heads=4, kv_heads=2)
    config = cpu_config(parallelType="tp", torchrun={"nproc-per-node": 2}, batchSize=4, maxBatchDelay=300,
                        continuousBatching=False,
                        responseTimeout=120, handler={"max_new_tokens": MAX_NEW_TOKENS})
    with running_server(str(root)) as server:
        client = server.client
        described = client.deploy("tiny-llama", model_dir=str(model_dir), config=config, wait=True)
        assert described["state"] == "ready", server.log()
        assert described["handler"].endswith("causal_lm:CausalLMHandler")
        assert len(described["workers"][0]["ranks"]) == 2

        with concurrent.futures.ThreadPoolExecutor(len(BATCH)) as pool:  # arrive together: one batch
            answers = list(pool.map(lambda item: client.predict("tiny-llama", item), BATCH))
        assert [a["token_ids"] for a in answers] == reference["llama"]
        sizes = {m: float(v) for m, v in re.findall(
            r'^lmjupyter_batch_size_(sum|count)\{[^}]*model="tiny-llama"[^}]*\} (\S+)$', client.metrics(), re.M)}
        assert sizes["sum"] == len(BATCH) and sizes["count"] < len(BATCH), sizes  # some batch held several

        partials, final = client.predict_stream("tiny-llama", BATCH[3])
        tokens = [p for p in partials if p is not None]
        assert [p["token_id"] for p in tokens] == final["token_ids"] == reference["llama"][3]
        assert "".join(p["text"] for p in tokens) == final["text"]
        client.undeploy("tiny-llama")
