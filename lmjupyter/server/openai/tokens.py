"""Token strings for logprobs: the native answer names tokens by id only.

Loaded lazily, once per model folder, with the ``tokenizers`` library alone (tens of
milliseconds, no transformers import in the server). Only calls that ask for
logprobs pay for it. A folder without ``tokenizer.json`` names tokens ``<id>``.
"""
from __future__ import annotations

import functools
import os


def token_strings(model_dir: str, ids: list[int]) -> list[str]:
    tokenizer = _tokenizer(model_dir, _mtime(model_dir))
    if tokenizer is None:
        return [f"<{i}>" for i in ids]
    return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]


def _mtime(model_dir: str) -> float:
    try:
        return os.stat(os.path.join(model_dir, "tokenizer.json")).st_mtime
    except OSError:
        return 0.0


@functools.lru_cache(maxsize=8)
def _tokenizer(model_dir: str, mtime: float):
    if not mtime:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
