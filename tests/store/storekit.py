"""Helpers of the model-store tests: a probe handler, archives built on the spot, a local wheel."""
import json
import os
import zipfile

PROBE = '''
import os
from lmjupyter.handlers import BaseHandler


class Probe(BaseHandler):
    """Answers what the rank sees: its model dir, manifest, config, files and importable modules."""

    def initialize(self, ctx):
        self.ctx = ctx

    def inference(self, batch):
        ctx, out = self.ctx, []
        for item in batch:
            item = item if isinstance(item, dict) else {}
            answer = {"model_dir": ctx.model_dir, "manifest_version": ctx.manifest.get("model", {}).get("modelVersion"),
                      "tag": ctx.handler_config.get("tag"), "pid": os.getpid()}
            if item.get("read"):
                with open(os.path.join(ctx.model_dir, item["read"])) as f:
                    answer["read"] = f.read()
            if item.get("import"):
                try:
                    answer["import"] = __import__(item["import"]).VALUE
                except ImportError as exc:
                    answer["import"] = f"ImportError: {exc}"
            out.append(answer)
        return out
'''

CONFIG = "deviceType: cpu\nminWorkers: 1\nmaxWorkers: 2\nstartupTimeout: 60\nhandler:\n  tag: {tag}\n"


def make_model_src(tmp_path):
    """A folder with a handler, a model-config.yaml and a weights folder, as a user has them."""
    src = tmp_path / "src"
    (src / "weights" / "shard").mkdir(parents=True)
    (src / "probe.py").write_text(PROBE)
    (src / "model-config.yaml").write_text(CONFIG.format(tag="from-archive"))
    (src / "weights" / "w0.bin").write_bytes(os.urandom(4096))
    (src / "weights" / "shard" / "w1.bin").write_text("shard one")
    (src / "vocab.txt").write_text("hello world")
    return src


def write_probe(folder, tag="v1") -> str:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "probe.py"), "w") as f:
        f.write(PROBE)
    with open(os.path.join(folder, "model-config.yaml"), "w") as f:
        f.write(CONFIG.format(tag=tag))
    return str(folder)


def build_wheel(folder, name="lmj_storedep", version="0.1", value="installed per model") -> str:
    """A pure-Python wheel written by hand: no build backend, no network."""
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}.py": f"VALUE = {value!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: lmjupyter-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as whl:
        for arcname, text in files.items():
            whl.writestr(arcname, text)
    return path


def build_mar(path, handler_source: str, config: str, manifest_extra: dict | None = None) -> str:
    """A TorchServe .mar as torch-model-archiver lays it out: a zip with MAR-INF/MANIFEST.json."""
    manifest = {"createdOn": "25/11/2026 10:00:00", "runtime": "python",
                "model": {"modelName": "wordcount", "handler": "ts_handler.py", "modelVersion": "1.0",
                          "configFile": "model-config.yaml", "envelope": "json"},
                "archiverVersion": "0.12.0", **(manifest_extra or {})}
    with zipfile.ZipFile(path, "w") as mar:
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        mar.writestr("ts_handler.py", handler_source)
        mar.writestr("model-config.yaml", config)
        mar.writestr("labels.txt", "zero\none\n")
    return str(path)
