"""TorchServe's ``BaseHandler`` (``ts.torch_handler.base_handler``) with its defaults.

``initialize`` loads the manifest's ``serializedFile``: with a ``modelFile`` (an
eager model: the one ``nn.Module`` class that file defines, then its state dict),
else as TorchScript (``torch.jit.load``), on ``cuda:<gpu_id>`` when there is a GPU,
else on the CPU; ``index_to_name.json`` in the model dir becomes ``self.mapping``.
``preprocess`` makes a tensor, ``inference`` runs the model under
``torch.inference_mode``, ``postprocess`` returns ``tolist()``, and ``handle``
chains them and records ``HandlerTime`` into ``context.metrics``. ONNX, TensorRT,
IPEX, XLA and ``pt2`` compilation are not carried over: override ``initialize``
for those.
"""
from __future__ import annotations

import abc
import importlib
import logging
import os
import time

from lmjupyter.compat.torchserve.util import list_classes_from_module, load_label_mapping, timed

logger = logging.getLogger(__name__)


class BaseHandler(abc.ABC):
    """The base of TorchServe handlers; subclasses override what they need."""

    def __init__(self):
        self.model = None
        self.mapping = None
        self.device = None
        self.initialized = False
        self.context = None
        self.model_pt_path = None
        self.manifest = None
        self.map_location = None
        self.explain = False
        self.target = 0
        self.profiler_args = {}

    def initialize(self, context):
        import torch

        self.context = context
        self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")
        self.manifest = context.manifest
        model_dir = properties.get("model_dir")
        model = self.manifest.get("model", {})
        serialized_file = model.get("serializedFile")
        self.model_pt_path = os.path.join(model_dir, serialized_file) if serialized_file else None
        model_file = model.get("modelFile", "")
        if model_file:
            self.model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
            self.model.to(self.device)
            self.model.eval()
        elif self.model_pt_path and self.model_pt_path.endswith(".pt"):
            self.model = self._load_torchscript_model(self.model_pt_path)
            self.model.eval()
        else:
            raise RuntimeError(
                "No model weights could be loaded: the manifest names no serializedFile ending in .pt and no "
                "modelFile (build the archive with torch-model-archiver --serialized-file model.pt, or override "
                "initialize)")
        self.mapping = load_label_mapping(os.path.join(model_dir, "index_to_name.json"))
        self.initialized = True

    def _load_torchscript_model(self, model_pt_path):
        import torch

        return torch.jit.load(model_pt_path, map_location=self.device)

    def _load_pickled_model(self, model_dir, model_file, model_pt_path):
        """The one ``nn.Module`` class of ``model_file``, with the state dict of ``model_pt_path`` loaded."""
        import torch

        if not os.path.isfile(os.path.join(model_dir, model_file)):
            raise RuntimeError("Missing the model.py file")
        module = importlib.import_module(model_file.split(".")[0])
        classes = list_classes_from_module(module)
        if len(classes) != 1:
            raise ValueError(f"Expected only one class as model definition. {classes}")
        model = classes[0]()
        if model_pt_path:
            model.load_state_dict(torch.load(model_pt_path, map_location=self.device))
        return model

    @timed
    def preprocess(self, data):
        import torch

        return torch.as_tensor(data, device=self.device)

    @timed
    def inference(self, data, *args, **kwargs):
        import torch

        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    @timed
    def postprocess(self, data):
        return data.tolist()

    def handle(self, data, context):
        """preprocess, inference, postprocess (or ``describe_handle``/``explain_handle`` when asked)."""
        started = time.time()
        self.context = context
        if self._is_describe():
            output = [self.describe_handle()]
        else:
            preprocessed = self.preprocess(data)
            if not self._is_explain():
                output = self.postprocess(self.inference(preprocessed))
            else:
                output = self.explain_handle(preprocessed, data)
        context.metrics.add_time("HandlerTime", round((time.time() - started) * 1000, 2), None, "ms")
        return output

    def explain_handle(self, data_preprocess, raw_data):
        """Captum explanations: ``get_insights(tensor, inputs, target)``, which subclasses provide."""
        row = raw_data[0]
        inputs, target = None, 0
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = row.get("target") or 0
        return self.get_insights(data_preprocess, inputs, target)

    def _is_explain(self):
        if self.context and self.context.get_request_header(0, "explain") == "True":
            self.explain = True
            return True
        return False

    def _is_describe(self):
        return bool(self.context and self.context.get_request_header(0, "describe") == "True")

    def describe_handle(self):
        """Customised metadata of ``GET /models/{m}?customized=true`` (not served by lmjupyter)."""
        return None

    def get_device(self):
        return self.device
