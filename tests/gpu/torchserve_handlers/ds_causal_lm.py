"""A TorchServe large-model handler in the idiom of TorchServe's examples/large_models/deepspeed."""
import torch
from transformers import AutoModelForCausalLM

from ts.handler_utils.distributed.deepspeed import get_ds_engine
from ts.torch_handler.distributed.base_deepspeed_handler import BaseDeepSpeedHandler


class DeepSpeedLM(BaseDeepSpeedHandler):
    def initialize(self, ctx):
        super().initialize(ctx)
        config = ctx.model_yaml_config["handler"]
        model = AutoModelForCausalLM.from_pretrained(config["model_path"], dtype=torch.bfloat16)
        self.model = get_ds_engine(model, ctx).module
        self.max_new_tokens = int(config.get("max_new_tokens", 7))
        self.initialized = True

    def preprocess(self, data):
        return [row.get("data") or row.get("body") for row in data]

    def inference(self, requests):
        answers = []
        for request in requests:
            ids = torch.tensor([request["input_ids"]], device=f"cuda:{self.device}")
            out = self.model.generate(ids, max_new_tokens=request.get("max_new_tokens", self.max_new_tokens),
                                      do_sample=False)
            answers.append(out[0, ids.shape[1]:].tolist())
        return answers

    def postprocess(self, outputs):
        return outputs
