"""TorchServe's BaseHandler defaults on a GPU: the TorchScript file is loaded on cuda:<gpu_id>."""
import torch

from ts.torch_handler.base_handler import BaseHandler


class Scripted(BaseHandler):
    def preprocess(self, data):
        return torch.as_tensor([row.get("body") for row in data], dtype=torch.float32)

    def postprocess(self, data):
        return [{"device": str(self.device), "y": row} for row in data.tolist()]
