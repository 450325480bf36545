"""Echoes its request: bytes stay bytes; anything else is streamed back in three steps."""
from lmjupyter.handlers import BaseHandler


class EchoStream(BaseHandler):
    def handle(self, requests, ctx):
        if all(isinstance(r, bytes) for r in requests):
            return list(requests)
        return super().handle(requests, ctx)

    def inference(self, batch):
        for step in range(3):
            yield [{"step": step} for _ in batch]
        return [{"echo": item} for item in batch]
