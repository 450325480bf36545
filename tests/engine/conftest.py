import pytest

from serverproc import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real ``lmjupyter serve`` per test module; each test undeploys what it deployed."""
    root = tmp_path_factory.mktemp("serve")
    proc = ServerProcess(str(root))
    yield proc
    proc.stop()
