"""A handler with a KV cache allocated once (``handler.kv_tokens`` slots of ``handler.width`` values
on ctx.device), as an LLM server holds one: a request whose prompt plus new tokens would not fit
is refused with 400 naming the limit, and the others of its batch are answered."""
import os

from lmjupyter.handlers import BaseHandler


class DoesNotFit(ValueError):
    status = 400  # answered with this status, for this request only


class KVBudget(BaseHandler):
    def initialize(self, ctx):
        import torch

        config = ctx.handler_config
        self.kv_tokens = int(config.get("kv_tokens", 1024))
        self.cache = torch.zeros(self.kv_tokens, int(config.get("width", 256)), device=ctx.device)

    def inference(self, batch):
        out = []
        for item in batch:
            need = int(item.get("prompt_tokens", 1)) + int(item.get("max_new_tokens", 1))
            if need > self.kv_tokens:
                out.append(DoesNotFit(f"prompt_tokens + max_new_tokens = {need} does not fit the KV cache of "
                                      f"{self.kv_tokens} tokens (handler.kv_tokens)"))
            else:
                self.cache[:need].add_(1)
                out.append({"tokens": need, "pid": os.getpid()})
        return out
