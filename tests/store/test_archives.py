"""Archives: pack, unpack safely, deploy each format and TorchServe's .mar, versions, requirements."""
import asyncio
import concurrent.futures
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest
import requests

from lmjupyter.archive.manifest import MANIFEST_NAME, ArchiveError, read_manifest
from lmjupyter.archive.pack import create_archive
from lmjupyter.archive.unpack import open_archive, unpack
from lmjupyter.client import LMServeError
from lmjupyter.engine.store import ModelStore
from serverproc import ServerProcess, wait_until
from storekit import build_mar, build_wheel, make_model_src, write_probe

pytestmark = pytest.mark.timeout(120)


# ---- packing and unpacking, in process ------------------------------------------------------------
def test_pack_records_hashes_and_refuses_overwrite(tmp_path):
    src = make_model_src(tmp_path)
    out = create_archive(model_name="m", version="2.0", handler=str(src / "probe.py"),
                         config_file=str(src / "model-config.yaml"),
                         extra_files=f"{src / 'weights'},{src / 'vocab.txt'}", export_path=str(tmp_path / "out"))
    assert out.endswith("m.tar.gz")
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile(MANIFEST_NAME))
    # an extra folder contributes its contents at the root, as with torch-model-archiver
    assert {"probe.py", "model-config.yaml", "w0.bin", "shard/w1.bin", "vocab.txt", MANIFEST_NAME} == names
    assert manifest["model"] == {"modelName": "m", "modelVersion": "2.0", "handler": "probe.py",
                                 "configFile": "model-config.yaml"}
    assert manifest["config"]["handler"] == {"tag": "from-archive"}
    assert manifest["lmjupyterVersion"] and len(manifest["files"]["w0.bin"]["sha256"]) == 64
    with pytest.raises(ArchiveError, match="--force"):
        create_archive(model_name="m", handler=str(src / "probe.py"), export_path=str(tmp_path / "out"))
    create_archive(model_name="m", handler=str(src / "probe.py"), export_path=str(tmp_path / "out"), force=True)
    with pytest.raises(ArchiveError, match="config-file"):
        (tmp_path / "bad.yaml").write_text("batchSize: many\n")
        create_archive(model_name="x", handler=str(src / "probe.py"), config_file=str(tmp_path / "bad.yaml"),
                       export_path=str(tmp_path / "out"))


def test_progress_is_shown_for_big_packaging(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(70 << 20)  # sparse: over the 64 MB threshold, cheap to read
    (tmp_path / "h.py").write_text("def handle(data, ctx):\n    return data\n")
    stream = io.StringIO()
    create_archive(model_name="big", handler=str(tmp_path / "h.py"), serialized_file=str(big),
                   archive_format="zip", export_path=str(tmp_path / "out"), progress_stream=stream)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("packaging big.zip: 70.0 MB / 70.0 MB (100%)") and len(lines) <= 12


def test_damaged_and_unsafe_archives_are_refused(tmp_path):
    src = make_model_src(tmp_path)
    out = create_archive(model_name="m", handler=str(src / "probe.py"), extra_files=str(src / "vocab.txt"),
                         archive_format="zip", export_path=str(tmp_path / "out"))
    # the same member count, one byte of vocab.txt changed: the sha256 check catches it
    tampered = str(tmp_path / "tampered.zip")
    with zipfile.ZipFile(out) as old, zipfile.ZipFile(tampered, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            new.writestr(info, data.replace(b"hello", b"jello") if info.filename == "vocab.txt" else data)
    with pytest.raises(ArchiveError, match="vocab.txt has sha256"):
        unpack(tampered, str(tmp_path / "unpacked"))
    twice = tmp_path / "twice.zip"
    with zipfile.ZipFile(twice, "w") as z, pytest.warns(UserWarning, match="Duplicate"):
        z.writestr("a.txt", "one")
        z.writestr("a.txt", "two")
    with pytest.raises(ArchiveError, match="appears twice"):
        unpack(str(twice), str(tmp_path / "unpacked"))
    truncated = tmp_path / "truncated.tar.gz"
    whole = open(create_archive(model_name="t", handler=str(src / "probe.py"), extra_files=str(src / "weights"),
                                export_path=str(tmp_path / "out")), "rb").read()
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArchiveError, match="damaged"):
        unpack(str(truncated), str(tmp_path / "unpacked"))

    outside = tmp_path / "escaped.txt"
    for name in ("../escaped.txt", "/tmp/escaped-abs.txt", "a/../../escaped.txt"):
        evil = tmp_path / "evil.zip"
        with zipfile.ZipFile(evil, "w") as z:
            z.writestr(name, "gotcha")
        with pytest.raises(ArchiveError, match="unsafe"):
            unpack(str(evil), str(tmp_path / "unpacked"))
    for kind, target in ((tarfile.SYMTYPE, "/etc/passwd"), (tarfile.SYMTYPE, "../../.."), (tarfile.LNKTYPE, "/etc/passwd")):
        evil = tmp_path / "evil.tar.gz"
        with tarfile.open(evil, "w:gz") as tar:
            link = tarfile.TarInfo("link")
            link.type, link.linkname = kind, target
            tar.addfile(link)
        with pytest.raises(ArchiveError, match="unsafe"):
            unpack(str(evil), str(tmp_path / "unpacked"))
    evil = tmp_path / "evil2.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"gotcha"))
    with pytest.raises(ArchiveError, match="unsafe"):
        unpack(str(evil), str(tmp_path / "unpacked"))
    assert not outside.exists() and not os.path.exists("/tmp/escaped-abs.txt")
    assert [p for p in os.listdir(tmp_path / "unpacked")] == []  # nothing half-unpacked is left


def test_manifest_paths_cannot_leave_the_archive(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text(json.dumps({"model": {"handler": "../../x.py", "modelVersion": "1"}}))
    with pytest.raises(ArchiveError, match="outside the archive"):
        open_archive(str(folder), str(tmp_path / "unpacked"))
    assert read_manifest(str(folder))[0] == "lmjupyter"


def test_torchserve_tgz_layout_and_garbage_collection(tmp_path):
    """torch-model-archiver's tgz wraps everything in <name>/; the store keeps what deploys used."""
    mar = build_mar(tmp_path / "wc.mar", "def handle(data, context):\n    return data\n", "deviceType: cpu\n")
    tgz = tmp_path / "wc.tar.gz"
    with zipfile.ZipFile(mar) as z, tarfile.open(tgz, "w:gz") as tar:
        for name in z.namelist():
            data = z.read(name)
            info = tarfile.TarInfo(f"wordcount/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    store = ModelStore(str(tmp_path / "store"), str(tmp_path / "run"))
    archive = asyncio.run(store.open_archive(str(tgz)))
    assert archive.kind == "torchserve" and archive.model_dir.endswith("/wordcount")
    assert archive.version == "1.0" and archive.handler == "ts_handler.py"
    stale = os.path.join(store.unpack_root, "old-0123456789abcdef")
    os.makedirs(stale)
    store.collect_garbage()
    assert not os.path.exists(stale) and os.path.isfile(os.path.join(archive.model_dir, "labels.txt"))
    store.close()


def test_without_a_model_store_archives_unpack_into_the_run_dir(tmp_path):
    from lmjupyter.engine.engine import Engine, EngineSettings

    src = make_model_src(tmp_path)
    path = create_archive(model_name="m", version="3", handler=str(src / "probe.py"),
                          config_file=str(src / "model-config.yaml"), export_path=str(tmp_path))

    async def plan():
        engine = Engine(EngineSettings(root_dir=str(tmp_path)))
        try:
            return engine.run_dir, await engine.deploy({"name": "m", "archive": "m.tar.gz", "dry_run": True})
        finally:
            await engine.shutdown()
    run_dir, answer = asyncio.run(plan())
    assert answer["dry_run"] and answer["handler"].startswith(os.path.join(run_dir, "unpacked"))
    assert answer["config"]["handler"] == {"tag": "from-archive"} and len(answer["plan"]["workers"]) == 1
    assert os.path.exists(path) and not os.path.exists(run_dir)  # removed with the server


# ---- deploying, against a real server ----------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("archives")
    proc = ServerProcess(str(root), "--model-store", str(root / "store"), env={"PIP_NO_INDEX": "1"})
    yield proc
    proc.stop()


def _deploy_all(client, bodies):
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: client.deploy(wait=True, **body), bodies))


def test_each_format_deploys_and_predicts(server, tmp_path_factory):
    root = server.root
    src = make_model_src(tmp_path_factory.mktemp("src", numbered=True))
    export = os.path.join(root, "archives")
    # tgz through the command line, zip and no-archive through the function it runs
    cli = subprocess.run([sys.executable, "-m", "lmjupyter.cli", "archive", "--model-name", "fmt", "--version", "7",
                          "--handler", str(src / "probe.py"), "--config-file", str(src / "model-config.yaml"),
                          "--extra-files", f"{src / 'weights'},{src / 'vocab.txt'}", "--archive-format", "tgz",
                          "--export-path", export], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    paths = {"tgz": cli.stdout.strip()}
    for fmt in ("zip", "no-archive"):
        paths[fmt] = create_archive(model_name="fmt", version="7", handler=str(src / "probe.py"),
                                    config_file=str(src / "model-config.yaml"), archive_format=fmt,
                                    extra_files=[str(src / "weights"), str(src / "vocab.txt")], export_path=export)
    assert paths["tgz"].endswith(".tar.gz") and os.path.isdir(paths["no-archive"])

    client = server.client
    described = _deploy_all(client, [{"name": f"fmt-{fmt}", "archive": os.path.relpath(path, root)}
                                     for fmt, path in paths.items()])
    assert [d["state"] for d in described] == ["ready"] * 3
    assert {d["version"] for d in described} == {"7"}  # the archive's modelVersion
    for fmt, path in paths.items():
        answer = client.predict(f"fmt-{fmt}", {"read": "shard/w1.bin"})
        assert answer["read"] == "shard one" and answer["tag"] == "from-archive" and answer["manifest_version"] == "7"
        if fmt == "no-archive":
            assert answer["model_dir"] == os.path.realpath(path)  # used in place: weights are not copied
        else:
            assert answer["model_dir"].startswith(os.path.realpath(os.path.join(root, "store")))
        assert client.describe(f"fmt-{fmt}")["archive"] == os.path.realpath(path)
    for fmt in paths:
        client.undeploy(f"fmt-{fmt}")


TS_HANDLER = '''
from ts.torch_handler.base_handler import BaseHandler


class WordCounter(BaseHandler):
    def initialize(self, context):
        self.manifest = context.manifest
        with open(context.system_properties["model_dir"] + "/labels.txt") as f:
            self.labels = f.read().split()
        self.prefix = context.model_yaml_config["handler"]["prefix"]

    def preprocess(self, data):
        return [row.get("data") or row.get("body") for row in data]

    def inference(self, inputs):
        return [len(text.split()) for text in inputs]

    def postprocess(self, outputs):
        return [f"{self.prefix}{self.labels[min(n, 1)]}:{n}:{self.manifest['model']['modelName']}" for n in outputs]
'''
TS_CONFIG = """minWorkers: 1
maxWorkers: 1
deviceType: cpu
parallelLevel: 1
useVenv: true
maxRetryTimeoutInSec: 60
someFutureKey: 3
handler:
  prefix: "count="
"""


def test_torchserve_mar_deploys_with_warnings(server):
    mar = build_mar(os.path.join(server.root, "wordcount.mar"), TS_HANDLER, TS_CONFIG)
    described = server.client.deploy("wordcount", archive="wordcount.mar", wait=True)
    assert described["state"] == "ready" and described["version"] == "1.0"
    warnings = "\n".join(described["warnings"])
    for named in ("useVenv", "maxRetryTimeoutInSec", "someFutureKey", "model.envelope",
                  "parallelLevel: 1 is used as torchrun.nproc-per-node"):
        assert named in warnings
    assert not any("shim" in w or "ts package" in w for w in described["warnings"])  # its ts imports just work
    assert described["config"]["torchrun"]["nproc-per-node"] == 1
    # TorchServe's rows: a JSON string body is row["body"], the str answer comes back as UTF-8 text
    assert server.client.predict("wordcount", "three words here") == b"count=one:3:wordcount"
    with pytest.raises(LMServeError) as info:  # a JSON object is row["body"] too: the handler's split() fails
        server.client.predict("wordcount", {"data": "three words here"})
    assert info.value.status == 503 and "Prediction failed" in info.value.message
    server.client.undeploy("wordcount")

    # what cannot run here is refused, naming why
    build_mar(os.path.join(server.root, "builtin.mar"), TS_HANDLER, TS_CONFIG,
              {"model": {"modelName": "builtin", "handler": "image_classifier"}})
    with pytest.raises(LMServeError) as info:
        server.client.deploy("builtin", archive="builtin.mar")
    assert info.value.status == 400 and "image_classifier" in info.value.message
    assert os.path.exists(mar)


def test_versions_route_and_default(server):
    client = server.client
    v1, v2 = (write_probe(os.path.join(server.root, f"ver{v}"), tag=f"tag{v}") for v in (1, 2))
    client.deploy("ver", "probe.py", model_dir=v1, version="1")  # registered (starting) before version 2
    client.deploy("ver", "probe.py", model_dir=v2, version="2", wait=True)
    wait_until(lambda: client.describe("ver", version="1")["state"] == "ready", 60, message="version 1")
    assert client.predict("ver", {})["tag"] == "tag1"                 # the first deployed is the default
    assert client.predict("ver", {}, version="2")["tag"] == "tag2"
    described = client.describe("ver")
    assert described["version"] == "1" and described["default_version"] == "1" and described["default"] is True
    assert [(v["version"], v["default"]) for v in described["versions"]] == [("1", True), ("2", False)]
    assert client.describe("ver", version="2")["handler"].endswith("ver2/probe.py")

    with pytest.raises(LMServeError) as info:
        client.deploy("ver", "probe.py", model_dir=v2, version="2")
    assert info.value.status == 409
    with pytest.raises(LMServeError) as info:
        client.predict("ver", {}, version="3")
    assert info.value.status == 404 and "versions: 1, 2" in info.value.message

    assert client.set_default("ver", "2")["version"] == "2"
    assert client.predict("ver", {})["tag"] == "tag2"
    assert client.scale("ver", 2, version="1")["target_workers"] == 2
    with pytest.raises(LMServeError) as info:
        client.undeploy("ver", version="2")  # the default, while version 1 runs
    assert info.value.status == 409
    assert client.undeploy("ver", version="1")["version"] == "1"
    assert [v["version"] for v in client.describe("ver")["versions"]] == ["2"]
    gone = client.undeploy("ver")
    assert [v["version"] for v in gone["versions"]] == ["2"]
    assert all(m["name"] != "ver" for m in client.list())


def test_paths_outside_the_allowed_roots_and_urls_are_refused(server, tmp_path):
    src = make_model_src(tmp_path)
    outside = create_archive(model_name="out", handler=str(src / "probe.py"), export_path=str(tmp_path))
    for archive, status in ((outside, 403), (str(tmp_path / "src"), 403), ("../../etc", 403),
                            ("http://example.com/m.mar", 400), ("file:///etc/passwd", 400)):
        response = requests.post(server.url + "lmserve/api/models", json={"name": "out", "archive": archive},
                                 headers={"Authorization": f"token {server.token}"}, timeout=30)
        assert response.status_code == status, (archive, response.text)
        assert response.json()["error"]["key"] == "archive"
    assert not os.path.exists(os.path.join(server.root, "store", ".lmjupyter", "unpacked", "out-"))


def test_requirements_are_installed_per_model_only_when_asked(server):
    root = server.root
    pkg = os.path.join(root, "req-src")
    write_probe(pkg, tag="req")
    wheel = build_wheel(pkg)
    with open(os.path.join(pkg, "requirements.txt"), "w") as f:
        f.write(f"./{os.path.basename(wheel)}\n")  # relative: pip reads it from the model's folder
    archive = create_archive(model_name="req", handler=os.path.join(pkg, "probe.py"),
                             config_file=os.path.join(pkg, "model-config.yaml"), extra_files=wheel,
                             requirements_file=os.path.join(pkg, "requirements.txt"), export_path=root)
    client = server.client
    first = client.deploy("req", archive=archive, version="1", wait=True)
    assert any("install_requirements" in w for w in first["warnings"])
    assert client.predict("req", {"import": "lmj_storedep"})["import"].startswith("ImportError")

    second = client.deploy("req", archive=archive, version="2", install_requirements=True, wait=True)
    assert second["state"] == "ready"
    assert client.predict("req", {"import": "lmj_storedep"}, version="2")["import"] == "installed per model"
    target = os.path.join(root, "store", ".lmjupyter", "requirements", "req", "2")
    assert os.path.isfile(os.path.join(target, "lmj_storedep.py"))
    probe = subprocess.run([sys.executable, "-c", "import lmj_storedep"], capture_output=True, timeout=60)
    assert probe.returncode != 0  # the server's own environment is untouched
    client.undeploy("req")
