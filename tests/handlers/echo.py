"""Echoes each request with where and how it was served; sleeps ``delay`` seconds if asked."""
import os
import time

from lmjupyter.handlers import BaseHandler


class Echo(BaseHandler):
    def initialize(self, ctx):
        self.rank = ctx.rank
        self.world_size = ctx.world_size
        self.delay = ctx.handler_config.get("delay", 0)

    def inference(self, batch):
        delays = [item.get("sleep", 0) for item in batch if isinstance(item, dict)]
        time.sleep(max(delays + [self.delay]))
        return [{"echo": item, "rank": self.rank, "world_size": self.world_size,
                 "batch": len(batch), "pid": os.getpid()} for item in batch]
