"""Shared by the GPU tests (a module of its own: tests/parallel has a conftest too)."""
from __future__ import annotations

# Prompts of different lengths, each request form, different budgets (as tests/parallel).
BATCH = [
    "Hello",
    {"prompt": "The quick brown fox jumps over the lazy dog and", "max_new_tokens": 5},
    {"input_ids": [42, 269, 78, 81, 277, 274, 273]},
    {"prompt": "Once upon a time", "max_new_tokens": 9, "temperature": 0},
]
MAX_NEW_TOKENS = 7


def request_ids(tokenizer, item) -> tuple[list[int], int]:
    if isinstance(item, str):
        item = {"prompt": item}
    ids = item.get("input_ids") or tokenizer(item["prompt"])["input_ids"]
    return list(ids), item.get("max_new_tokens", MAX_NEW_TOKENS)


def gpu_generate(model_dir: str, batch=BATCH, dtype_name: str = "bfloat16") -> list[list[int]]:
    """Greedy ``generate`` on cuda:0, one prompt at a time, unpadded: the ground truth."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype_name)).to("cuda:0").eval()
    answers = []
    for item in batch:
        ids, n = request_ids(tokenizer, item)
        out = model.generate(torch.tensor([ids], device="cuda:0"), max_new_tokens=n, do_sample=False)
        answers.append(out[0, len(ids):].tolist())
    del model
    torch.cuda.empty_cache()
    return answers
