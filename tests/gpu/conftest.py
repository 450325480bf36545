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
    from tinyset import build_model_set

    return build_model_set(tmp_path_factory.mktemp("tiny-gpu"))
