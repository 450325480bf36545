"""Fixtures of the parallel tests: the tiny models and their reference answers."""
import pytest

from ranks import hf_generate


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    from tinyset import build_model_set

    return build_model_set(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def reference(models):
    return {name: hf_generate(path) for name, path in models.items()}
