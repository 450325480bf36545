"""A tiny GPT-2 (2 layers, 64 hidden) doing one forward pass per request on a fixed small input.

The model folder is written by ``benchmarks/run.py`` with ``save_pretrained``; here it is
loaded with ``from_pretrained``. Each request in a batch gets one row of a batched forward
pass over the same 16 token ids; the answer is the arg-max of the last position's logits.
"""
import torch
from transformers import GPT2LMHeadModel

INPUT_IDS = list(range(1, 17))


class TinyGPT2:
    def initialize(self, ctx):
        # torch threads: the engine's default OMP_NUM_THREADS=1 (model-config torchrun.OMP_NUMBER_THREADS)
        self.model = GPT2LMHeadModel.from_pretrained(ctx.model_dir).eval()

    def handle(self, requests, ctx):
        ids = torch.tensor([INPUT_IDS] * len(requests))
        with torch.inference_mode():
            logits = self.model(input_ids=ids).logits
        return [{"next_token": int(t)} for t in logits[:, -1].argmax(-1)]
