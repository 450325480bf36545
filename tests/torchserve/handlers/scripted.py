"""TorchServe's BaseHandler defaults: initialize loads the archive's TorchScript file, inference and
postprocess as they are; only preprocess is the model's own."""
import torch

from ts.torch_handler.base_handler import BaseHandler


class Linear(BaseHandler):
    def preprocess(self, data):
        return torch.as_tensor([row.get("data") or row.get("body") for row in data], dtype=torch.float32)
