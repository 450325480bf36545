"""Takes ``handler.load_seconds`` (default 30) to load, like a large checkpoint would."""
import time

from lmjupyter.handlers import BaseHandler


class SlowInit(BaseHandler):
    def initialize(self, ctx):
        time.sleep(ctx.handler_config.get("load_seconds", 30))
