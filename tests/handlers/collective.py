"""Every rank takes part in an all_reduce per batch; on {"hang": true} the last rank skips it, so
the others wait in the collective forever (a desynchronised rank, as a bug or a dead NIC makes)."""
import os

from lmjupyter.handlers import BaseHandler


class Collective(BaseHandler):
    def initialize(self, ctx):
        import torch

        self.ctx = ctx
        self.device = torch.device(ctx.device)

    def inference(self, batch):
        import torch
        import torch.distributed as dist

        hang = any(isinstance(item, dict) and item.get("hang") for item in batch)
        total = torch.ones(1, device=self.device)
        if not (hang and self.ctx.rank == self.ctx.world_size - 1):
            dist.all_reduce(total)
        return [{"sum": int(total.item()), "pid": os.getpid()} for _ in batch]
