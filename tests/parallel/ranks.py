"""Reference answers from ``generate`` and a torchrun launcher, shared by the parallel tests.

A module of its own (not conftest.py): several test folders have a conftest.py, and
``from conftest import`` would get whichever of them was imported first."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("driver.py")

# Prompts of different lengths, each request form, and different budgets.
BATCH = [
    "Hello",
    {"prompt": "The quick brown fox jumps over the lazy dog and", "max_new_tokens": 5},
    {"input_ids": [42, 269, 78, 81, 277, 274, 273]},
    {"prompt": "Once upon a time", "max_new_tokens": 9, "temperature": 0},
]
MAX_NEW_TOKENS = 7  # the handler: default for requests that do not say


def request_ids(tokenizer, item) -> tuple[list[int], int]:
    if isinstance(item, str):
        item = {"prompt": item}
    ids = item.get("input_ids") or tokenizer(item["prompt"])["input_ids"]
    return list(ids), item.get("max_new_tokens", MAX_NEW_TOKENS)


def hf_generate(model_dir: str, batch=BATCH) -> list[list[int]]:
    """Greedy ``generate``, one prompt at a time, unpadded: the ground truth."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    answers = []
    for item in batch:
        ids, n = request_ids(tokenizer, item)
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
        answers.append(out[0, len(ids):].tolist())
    return answers


def run_ranks(nproc: int, config: dict, models: dict, out_dir: Path, batch=BATCH, timeout: float = 150) -> dict:
    """Launch ``nproc`` ranks with real torchrun; return {(model, path): {rank: record}}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = out_dir / "spec.json"
    spec.write_text(json.dumps({"models": models, "config": config, "batch": batch}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "--monitor-interval=0.1", str(DRIVER), str(spec), str(out_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and every rank it started
        output, _ = proc.communicate()
        raise AssertionError(f"ranks did not finish in {timeout}s:\n{output[-6000:]}") from None
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{output[-6000:]}"
    records = {}
    for name in models:
        for path in ("per_batch", "continuous"):
            records[name, path] = {r: json.loads((out_dir / f"{name}.{path}.rank{r}.json").read_text())
                                   for r in range(nproc)}
    return records
