"""TorchServe's handler helpers (``ts.utils.util``, ``ts.handler_utils.timer``/``utils``), same names and behaviour."""
from __future__ import annotations

import enum
import importlib
import inspect
import itertools
import json
import logging
import os
import re
import time

import yaml

logger = logging.getLogger(__name__)
CLEANUP_REGEX = re.compile("<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")


class PredictionException(Exception):
    """Raised by a handler: every request of the batch is answered with ``error_code`` and ``message``."""

    def __init__(self, message, error_code=500):
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self):
        return f"{self.message} : {self.error_code}"


class PT2Backend(str, enum.Enum):
    EAGER = "eager"
    AOT_EAGER = "aot_eager"
    INDUCTOR = "inductor"
    NVFUSER = "nvfuser"
    AOT_NVFUSER = "aot_nvfuser"
    AOT_CUDAGRAPHS = "aot_cudagraphs"
    OFI = "ofi"
    FX2TRT = "fx2trt"
    ONNXRT = "onnxrt"
    IPEX = "ipex"
    TORCHXLA_TRACE_ONCE = "torchxla_trace_once"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"
    HPU_BACKEND = "hpu_backend"


def check_valid_pt2_backend(backend: str) -> bool:
    if backend in {member.value for member in PT2Backend}:
        return True
    logger.warning("%s is not a supported backend", backend)
    return False


def list_classes_from_module(module, parent_class=None) -> list:
    """The classes defined in ``module`` itself (subclasses of ``parent_class`` only, when given)."""
    classes = [obj for _, obj in inspect.getmembers(module, inspect.isclass) if obj.__module__ == module.__name__]
    return [c for c in classes if issubclass(c, parent_class)] if parent_class is not None else classes


def load_label_mapping(mapping_file_path):
    """``{class id: label}`` from an ``index_to_name.json``, or None when the file is missing."""
    if not os.path.isfile(mapping_file_path):
        logger.warning("%r is missing. Inference output will not include class name.", mapping_file_path)
        return None
    with open(mapping_file_path) as f:
        mapping = json.load(f)
    if not isinstance(mapping, dict):
        raise Exception('index->name JSON mapping should be in "class": "label" format.')
    if isinstance(mapping.get("object_type_names"), list):  # the older examples' layout
        return {str(k): v for k, v in enumerate(mapping["object_type_names"])}
    for key, value in mapping.items():
        label = value[-1] if isinstance(value, list) else value
        if not isinstance(label, str):
            raise Exception("labels in index->name mapping must be either str or List[str]")
        mapping[key] = label
    return mapping


def map_class_to_label(probs, mapping=None, lbl_classes=None):
    """One ``{label: probability}`` dict per row of ``probs``."""
    if not isinstance(probs, list):
        raise Exception("Convert classes to list before doing mapping")
    if mapping is not None and not isinstance(mapping, dict):
        raise Exception("Mapping must be a dict")
    if lbl_classes is None:
        lbl_classes = itertools.repeat(range(len(probs[0])), len(probs))
    return [{(mapping[str(c)] if mapping is not None else str(c)): p for c, p in zip(*row)}
            for row in zip(lbl_classes, probs)]


def get_yaml_config(yaml_file_path) -> dict:
    with open(yaml_file_path) as f:
        return yaml.safe_load(f)


def import_class(class_name: str, module_prefix=None):
    """``"pkg.mod.Class"`` (or ``"mod.Class"`` under ``module_prefix``) to the class."""
    if not class_name:
        raise ImportError("class name is not defined")
    module_name, _, name = class_name.rpartition(".")
    if module_prefix:
        module = importlib.import_module(f"{module_prefix}.{module_name}" if module_name else module_prefix)
    elif module_name:
        module = importlib.import_module(module_name)
    else:
        raise ImportError("module name is not defined.")
    cls = getattr(module, name, None)
    if cls is None:
        raise ImportError(f"class:{name} not found in module:{module_name}.")
    return cls


def timed(func):
    """Record a method's time as the metric ``ts_handler_<name>`` when ``handler: {profile: true}``."""
    def wrapper(self, *args, **kwargs):
        context = getattr(self, "context", None)
        handler_config = (context.model_yaml_config or {}).get("handler") or {} if context else {}
        if not handler_config.get("profile"):
            return func(self, *args, **kwargs)
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            started = time.time()
        result = func(self, *args, **kwargs)
        if cuda:
            end.record()
            torch.cuda.synchronize()
            duration = start.elapsed_time(end)
        else:
            duration = (time.time() - started) * 1000
        context.metrics.add_time("ts_handler_" + func.__name__, duration)
        return result
    wrapper.__name__, wrapper.__doc__, wrapper.__wrapped__ = func.__name__, func.__doc__, func
    return wrapper


def send_intermediate_predict_response(ret, req_id_map, message, code, context=None):
    """Stream ``ret[idx]`` to the client of each request ``idx`` in ``req_id_map`` now (chunked, as TorchServe)."""
    if context is None:
        raise ValueError("send_intermediate_predict_response needs the context the handler was given")
    context.send_intermediate(ret, req_id_map)
