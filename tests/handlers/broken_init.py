"""Fails while loading, as a handler with a missing checkpoint would."""
from lmjupyter.handlers import BaseHandler


class BrokenInit(BaseHandler):
    def initialize(self, ctx):
        raise FileNotFoundError("checkpoint weights.pt not found in " + ctx.model_dir)
