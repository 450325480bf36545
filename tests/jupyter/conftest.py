"""Fixtures for tests that run a real Jupyter server as a subprocess."""
import pytest

from jupyterproc import JupyterServer


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    """One ``jupyter server`` with the lmjupyter extension per test module."""
    server = JupyterServer(tmp_path_factory.mktemp("jupyter"), base_url="/jh/")  # kernels must get the base_url
    yield server
    try:
        for model in server.lmserve("GET", "models", timeout=30).json().get("models", []):
            server.lmserve("DELETE", f"models/{model['name']}", timeout=60)
    finally:
        server.stop()
