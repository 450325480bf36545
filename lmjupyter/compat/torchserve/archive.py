"""Import of TorchServe model archives (``.mar``, or torch-model-archiver's ``.tar.gz``/folder).

The archive's handler, extra files and model-config.yaml (manifest key
``configFile``) are used as they are, and its handler's ``ts`` imports resolve
(``lmjupyter.compat.torchserve``). What cannot carry over is named in a warning
that the deploy answer returns: frontend (Java) settings lmjupyter has no
equivalent for, and manifest keys it does not use.
"""
from __future__ import annotations

import os
import re

from typing import TYPE_CHECKING

from lmjupyter.archive.manifest import ArchiveError, handler_file

if TYPE_CHECKING:
    from lmjupyter.archive.unpack import UnpackedArchive

# TorchServe frontend keys of model-config.yaml that lmjupyter does not implement, and why.
JAVA_ONLY_KEYS = {
    "parallelLevel": "the ranks per worker are torchrun.nproc-per-node",
    "maxRetryTimeoutInSec": "a broken worker is restarted with backoff, up to 5 attempts",
    "clientTimeoutInMills": "requests are bounded by responseTimeout",
    "sequenceBatching": "stateful sequence batching is not implemented",
    "sequenceMaxIdleMSec": "stateful sequence batching is not implemented",
    "maxNumSequence": "stateful sequence batching is not implemented",
    "maxSequenceJobQueueSize": "stateful sequence batching is not implemented",
    "asyncCommunication": "stream partial results with ?stream=1 instead",
    "useVenv": "requirements are installed per model when the deploy asks (install_requirements: true)",
    "coreType": "not used by lmjupyter", "coreIds": "not used by lmjupyter",
    "gpuIds": "use deviceIds",
}
MANIFEST_TOP_KEYS = {"createdOn", "runtime", "model", "archiverVersion", "modelServerVersion",
                     "implementationVersion", "specificationVersion", "description", "license", "publisher",
                     "engine", "user-data"}
MANIFEST_MODEL_KEYS = {"modelName", "modelVersion", "handler", "serializedFile", "modelFile", "configFile",
                       "requirementsFile", "description"}
BUILTIN_TS_HANDLERS = {"image_classifier", "object_detector", "text_classifier", "image_segmenter",
                       "text_handler", "vision_handler", "base_handler", "dali_image_classifier"}
IMPORTS_TS = re.compile(r"^\s*(from\s+ts(\.\w+)*\s+import|import\s+ts(\.|\s|$))", re.M)


def import_torchserve(archive: "UnpackedArchive") -> None:
    """Check what can run here, take TorchServe-only settings out of the config and name them."""
    manifest, model, warnings = archive.manifest, archive.manifest["model"], archive.warnings
    runtime = str(manifest.get("runtime", "python")).lower()
    if runtime not in ("python", "python3"):
        raise ArchiveError(f"{archive.source}: TorchServe runtime {runtime!r} cannot run here; only python "
                           "handlers do", key="runtime")
    for key in sorted(set(manifest) - MANIFEST_TOP_KEYS):
        warnings.append(f"MANIFEST.json: key {key!r} is not used by lmjupyter and is ignored")
    for key in sorted(set(model) - MANIFEST_MODEL_KEYS):
        warnings.append(f"MANIFEST.json: model.{key} is not used by lmjupyter and is ignored")
    if not archive.handler:
        raise ArchiveError(f"{archive.source}: MANIFEST.json names no handler", key="handler")
    if archive.handler in BUILTIN_TS_HANDLERS:
        raise ArchiveError(f"{archive.source}: TorchServe's built-in handler {archive.handler!r} is not part of "
                           "lmjupyter; package a handler file (see lmjupyter.handlers.BaseHandler)", key="handler")
    if archive.config is not None:
        archive.config = _translated_config(archive.config, archive.config_name, warnings)
    _check_handler_source(archive, model)


def _translated_config(text: str, filename: str, warnings: list[str]) -> str | dict:
    """model-config.yaml with TorchServe-only keys taken out (and named), or as it is."""
    import yaml

    from lmjupyter.config import ConfigError, load_config

    try:
        load_config(text, filename=filename)  # wrong values: refused at deploy, with their line
        data = yaml.safe_load(text)
    except (ConfigError, yaml.YAMLError):
        return text
    if not isinstance(data, dict) or not set(data) & set(JAVA_ONLY_KEYS):
        return text
    for key in [k for k in data if k in JAVA_ONLY_KEYS]:
        value = data.pop(key)
        if key == "parallelLevel" and "nproc-per-node" not in (data.get("torchrun") or {}):
            data.setdefault("torchrun", {})["nproc-per-node"] = value
            warnings.append(f"{filename}: parallelLevel: {value} is used as torchrun.nproc-per-node "
                            "(TorchServe's newer key)")
            continue
        warnings.append(f"{filename}: {key} is a TorchServe frontend setting with no lmjupyter equivalent and "
                        f"is ignored: {JAVA_ONLY_KEYS[key]}")
    return data


def _check_handler_source(archive: "UnpackedArchive", model: dict) -> None:
    file_part = handler_file(archive.handler)
    path = os.path.join(archive.model_dir, file_part)
    if not file_part.endswith(".py") or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        source = f.read()
    if (model.get("serializedFile") or model.get("modelFile")) and "def initialize" not in source \
            and not IMPORTS_TS.search(source):
        archive.warnings.append(
            f"{file_part} has no initialize() and does not use TorchServe's BaseHandler: "
            "lmjupyter's BaseHandler does not load serializedFile/modelFile; load them in "
            "initialize(ctx) from ctx.model_dir, or subclass ts.torch_handler.base_handler.BaseHandler")
