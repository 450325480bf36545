"""The registry snapshot: models come back after kill -9, damaged snapshots never stop a start."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmjupyter.archive.pack import create_archive
from serverproc import ServerProcess, alive, descendants, rank_pids, wait_until
from storekit import write_probe

pytestmark = pytest.mark.timeout(150)


def _all_ready(client, count: int, timeout: float = 90) -> list[dict]:
    def ready():
        models = client.list()
        return models if len(models) == count and all(m["state"] == "ready" for m in models) else None
    return wait_until(ready, timeout, interval=0.2, message=f"{count} restored model versions to be ready")


def test_models_come_back_after_kill_9(tmp_path):
    root = str(tmp_path)
    store = os.path.join(root, "store")
    kept = write_probe(os.path.join(root, "kept"), tag="kept")
    src = write_probe(os.path.join(root, "arch-src"), tag="archived")
    archive = create_archive(model_name="arch", version="5", handler=os.path.join(src, "probe.py"),
                             config_file=os.path.join(src, "model-config.yaml"), export_path=root)

    first = ServerProcess(root, "--model-store", store)
    try:
        client = first.client
        client.deploy("kept", "probe.py", model_dir=kept, wait=True)
        client.deploy("arch", archive=archive, wait=True)                   # version 5, from the manifest
        client.deploy("arch", archive=archive, version="6", wait=True)
        client.scale("kept", 2)
        client.set_default("arch", "6")
        before = {(m["name"], m["version"]): m for m in client.list()}
        processes = descendants(first.proc.pid)
        assert set(sum((rank_pids(m) for m in before.values()), [])) <= processes
        assert len(processes) >= 8  # 4 worker groups: a torchrun agent and a rank each

        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        wait_until(lambda: not any(alive(p) for p in processes), 15, message="workers of the killed server to end")
    finally:
        first.stop()
    with open(os.path.join(store, "registry.json")) as f:
        snapshot = json.load(f)
    assert [(m["name"], m["version"], m["workers"], m["default"]) for m in snapshot["models"]] == [
        ("arch", "5", 1, False), ("arch", "6", 1, True), ("kept", "1", 2, True)]

    second = ServerProcess(root, "--model-store", store)
    try:
        client = second.client
        after = {(m["name"], m["version"]): m for m in _all_ready(client, 3)}
        assert set(after) == set(before)
        for key, model in after.items():
            assert model["config"] == before[key]["config"] and model["handler"] == before[key]["handler"]
            assert len(model["workers"]) == model["target_workers"] == before[key]["target_workers"]
            assert model["default"] == before[key]["default"]
            assert not set(rank_pids(model)) & processes
        assert after[("kept", "1")]["target_workers"] == 2
        assert client.predict("kept", {})["tag"] == "kept"
        assert client.predict("arch", {})["manifest_version"] == "5"  # version 6 is the same archive
        assert client.describe("arch")["version"] == "6"
        assert client.restore_errors() == []
    finally:
        second.stop()  # SIGTERM: a clean stop keeps the models recorded for the next start
    with open(os.path.join(store, "registry.json")) as f:
        assert len(json.load(f)["models"]) == 3


def _registry(store: str, models: list) -> None:
    os.makedirs(store, exist_ok=True)
    with open(os.path.join(store, "registry.json"), "w") as f:
        json.dump({"format": "lmjupyter-registry", "formatVersion": 1, "models": models}, f)


def test_a_damaged_snapshot_never_stops_the_server(tmp_path):
    root = str(tmp_path)
    store = os.path.join(root, "store")
    good = write_probe(os.path.join(root, "good"), tag="good")
    config = {"deviceType": "cpu", "minWorkers": 1, "maxWorkers": 2, "handler": {"tag": "good"}}
    entry = {"name": "good", "version": "1", "workers": 1, "default": True,
             "deploy": {"handler": os.path.join(good, "probe.py"), "model_dir": good, "config": config}}
    _registry(store, [entry])
    with open(os.path.join(store, "registry.json"), "r+") as f:  # a write cut short
        f.truncate(os.path.getsize(f.name) // 2)
    server = ServerProcess(root, "--model-store", store)
    try:
        errors = server.client.restore_errors()
        assert len(errors) == 1 and "cannot be read" in errors[0]["message"]
        assert os.path.exists(errors[0]["snapshot_kept_at"])
        assert server.client.list() == []
    finally:
        server.stop()

    gone = os.path.join(root, "gone")
    _registry(store, [
        entry,
        {**entry, "name": "nodir", "deploy": {**entry["deploy"], "model_dir": gone,
                                               "handler": os.path.join(gone, "probe.py")}},
        {**entry, "name": "noarchive", "deploy": {"archive": os.path.join(root, "gone.tar.gz"), "config": config}},
        {**entry, "name": "badkey", "deploy": {**entry["deploy"], "colour": "blue"}},
        {"name": "half"},
        "nonsense",
    ])
    server = ServerProcess(root, "--model-store", store)
    try:
        _all_ready(server.client, 1)
        assert server.client.predict("good", {})["tag"] == "good"
        errors = wait_until(lambda: len(server.client.restore_errors()) == 5 and server.client.restore_errors(),
                            30, message="restore errors")
        by_name = {e.get("name"): e["message"] for e in errors}
        assert "does not exist" in by_name["nodir"] and "does not exist" in by_name["noarchive"]
        assert "colour" in by_name["badkey"] and "version is missing" in by_name["half"]
        assert "expected an object" in by_name[None]
        assert "not restored" in server.log()
        with open(os.path.join(store, "registry.json")) as f:  # rewritten with what came back
            assert [m["name"] for m in json.load(f)["models"]] == ["good"]

        # a second server on the same store says so in one line, exits non-zero and leaves the registry alone
        other = subprocess.run([sys.executable, "-m", "lmjupyter.cli", "serve", "--port", "0", "--model-store", store],
                               cwd=root, capture_output=True, text=True, timeout=60)
        assert other.returncode == 1 and other.stdout == ""
        assert other.stderr.strip().splitlines() == [
            f"lmjupyter serve: model store {store} is in use by another lmjupyter server (pid {server.proc.pid})"]
        with open(os.path.join(store, "registry.json")) as f:
            assert [m["name"] for m in json.load(f)["models"]] == ["good"]
    finally:
        server.stop()
