"""A real ``lmjupyter serve`` with a model store, for the TorchServe tests."""
import pytest

from markit import HANDLERS
from serverproc import ServerProcess


@pytest.fixture(scope="module")
def ts_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchserve")
    proc = ServerProcess(str(root), "--model-store", str(root / "store"), "--allow-root", HANDLERS)
    yield proc
    proc.stop()
