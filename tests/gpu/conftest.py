"""GPU tests: skipped, with the reason, where torch sees no CUDA device (CI)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for path in (str(REPO), str(REPO / "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in items:
        if str(item.fspath).startswith(str(HERE)):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    from lmjupyter.models.tiny import build_tiny_gpt2, build_tiny_llama

    root = tmp_path_factory.mktemp("tiny-gpu")
    return {
        "llama": str(build_tiny_llama(root / "llama", num_layers=3, hidden=64, heads=4, kv_heads=2)),
        "gpt2": str(build_tiny_gpt2(root / "gpt2", num_layers=3, hidden=64, heads=4, vocab=321)),
        "llama_tied": str(build_tiny_llama(root / "llama_tied", num_layers=5, hidden=32, heads=4, kv_heads=2,
                                           tie_word_embeddings=True, seed=1)),
    }
