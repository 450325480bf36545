"""A real ``lmjupyter serve`` with a tiny Llama (built-in handler) and an echo model, for the /v1 tests."""
import pytest

from serverproc import ServerProcess, cpu_config, handler_path
from v1kit import MODEL


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory):
    from lmjupyter.models.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("openai")
    model_dir = build_tiny_llama(root / "llama", num_layers=2, hidden=32, heads=4, kv_heads=2)
    server = ServerProcess(str(root))
    try:
        server.client.deploy(MODEL, model_dir=str(model_dir), wait=True,
                             config=cpu_config(batchSize=4, handler={"max_new_tokens": 12}))
        server.client.deploy("echo", handler_path("echo.py"), config=cpu_config(), wait=True)
        server.model_dir = str(model_dir)
        yield server
    finally:
        server.stop()
