"""Fixtures of the parallel tests: the tiny models and their reference answers."""
import pytest

import sys, os
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "parallel"))
from ranks import hf_generate  # noqa: E402


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    from tinyset import build_model_set

    return build_model_set(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def reference(models):
    return {name: hf_generate(path) for name, path in models.items()}
