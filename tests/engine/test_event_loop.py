"""``lmjupyter serve --loop``: uvloop when installed (auto), asyncio's own loop on request."""
import importlib.util

import pytest

from serverproc import cpu_config, handler_path, running_server


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serving_on_either_event_loop(tmp_path, loop):
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed")
    with running_server(str(tmp_path), "--loop", loop) as server:
        assert f"event loop: {loop}" in server.log()
        server.client.deploy("loop", handler_path("echo.py"), config=cpu_config(batchSize=4), wait=True)
        assert server.client.predict("loop", {"x": 1})["echo"] == {"x": 1}
        server.client.undeploy("loop")
