"""Part 4 of issue 13: ``kill -9`` of the server (standalone and Jupyter) under load and in the middle
of deploys. No rank outlives it, the registry snapshot is whole, and the next start brings back
every model (or lists it in restore_errors) without hanging."""
import json
import os
import signal
import threading
import time

import pytest
from jupyterproc import JupyterServer
from lmjupyter.archive.pack import create_archive
from procwatch import Load, descendants
from serverproc import ServerProcess, alive, handler_path, wait_until

pytestmark = pytest.mark.timeout(240)
ECHO = "lmjupyter.handlers.base:BaseHandler"
STEADY = {"deviceType": "cpu", "minWorkers": 1, "maxWorkers": 2, "batchSize": 4, "torchrun": {"nproc-per-node": 2}}


def ready_models(list_models, names: set, timeout: float = 120) -> dict:
    def done():
        models = {m["name"]: m for m in list_models()}
        return models if names <= set(models) and all(models[n]["state"] == "ready" for n in names) else None
    return wait_until(done, timeout, interval=0.25, message=f"{sorted(names)} to be ready again")


def snapshot(store) -> dict:
    with open(os.path.join(store, "registry.json")) as f:
        return {m["name"]: m for m in json.load(f)["models"]}


def kill_9(proc, below: set) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    wait_until(lambda: not any(alive(p) for p in below), 20, message="every rank and torchrun to end")


def test_kill_9_of_lmjupyter_serve_under_load_and_mid_deploy(tmp_path):
    root, store = str(tmp_path), str(tmp_path / "store")
    big = tmp_path / "big-src"
    big.mkdir()
    (big / "weights.bin").write_bytes(os.urandom(96 << 20))  # an unpack that takes a while
    (big / "echo.py").write_text("from lmjupyter.handlers import BaseHandler\n\nclass Echo(BaseHandler):\n    pass\n")
    archive = create_archive(model_name="big", handler=str(big / "echo.py"), extra_files=str(big / "weights.bin"),
                             archive_format="zip", export_path=root)
    first = ServerProcess(root, "--model-store", store)
    try:
        client = first.client
        client.deploy("steady", ECHO, config=STEADY, wait=True)
        client.scale("steady", 2)
        load = Load(first.url + "lmserve/api/models/steady/predict", {"Authorization": f"token {first.token}"})
        time.sleep(2)
        # a deploy whose ranks are still loading, and an archive deploy still unpacking, at the kill
        client.deploy("loading", handler_path("slow_init.py"),
                      config={"deviceType": "cpu", "handler": {"load_seconds": 4}}, wait=False)
        unpacking = threading.Thread(target=lambda: _try(lambda: client.deploy("big", archive=archive, wait=True)))
        unpacking.start()
        wait_until(lambda: any(n.startswith(".unpacking-") for n in _listdir(store, ".lmjupyter", "unpacked")),
                   30, interval=0.01, message="the unpack to begin")
        below = descendants(first.proc.pid)
        assert len(below) >= 2 * 3 + 1  # 2 groups of (torchrun + 2 ranks), and the loading torchrun
        kill_9(first.proc, below)
        counts = load.stop()
        unpacking.join(30)
    finally:
        first.stop()
    assert counts["200"] > 0 and counts["wrong"] == 0 and counts["hung"] == 0, counts
    assert set(counts) <= {"200", "refused"}, counts  # under load: answered, or no server at all

    recorded = snapshot(store)  # whole JSON (atomic writes), with both deploys that had answered
    assert recorded["steady"]["workers"] == 2 and "loading" in recorded and "big" not in recorded

    second = ServerProcess(root, "--model-store", store)
    try:
        models = ready_models(second.client.list, {"steady", "loading"})
        assert len(models["steady"]["workers"]) == 2 and second.client.restore_errors() == []
        assert second.client.predict("steady", {"after": "kill"}) == {"after": "kill"}
        assert not any(n.startswith(".unpacking-") for n in _listdir(store, ".lmjupyter", "unpacked"))
    finally:
        second.stop()


def test_kill_9_of_the_jupyter_server_under_load(tmp_path):
    store = str(tmp_path / "store")
    config = {"LMServe": {"model_store": store}}
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    first = JupyterServer(tmp_path / "one", server_config=config, root=tmp_path / "root")
    try:
        response = first.lmserve("POST", "models", json={"name": "steady", "handler": ECHO, "config": STEADY,
                                                         "wait": True})
        assert response.status_code == 201, response.text
        load = Load(first.url + "lmserve/api/models/steady/predict", {"Authorization": f"token {first.token}"})
        time.sleep(2)
        below = descendants(first.pid)
        kill_9(first.proc, below)
        counts = load.stop()
    finally:
        first.stop()
    assert counts["200"] > 0 and counts["wrong"] == 0 and counts["hung"] == 0, counts
    assert "steady" in snapshot(store)

    second = JupyterServer(tmp_path / "two", server_config=config, root=tmp_path / "root")
    try:
        ready_models(lambda: second.lmserve("GET", "models").json()["models"], {"steady"})
        answer = second.lmserve("POST", "models/steady/predict", json={"after": "kill"})
        assert answer.status_code == 200 and answer.json() == {"after": "kill"}
    finally:
        second.stop()


def _try(call):
    try:
        call()
    except Exception:  # noqa: BLE001 - the server is killed under this call
        pass


def _listdir(*parts) -> list[str]:
    try:
        return os.listdir(os.path.join(*parts))
    except OSError:
        return []
