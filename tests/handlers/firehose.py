"""Streams ``parts`` partial results of ``size`` characters each as fast as it can (a long generation)."""
from lmjupyter.handlers import BaseHandler


class Firehose(BaseHandler):
    def inference(self, batch):
        items = [item if isinstance(item, dict) else {} for item in batch]
        parts = max(int(item.get("parts", 100)) for item in items)
        size = max(int(item.get("size", 1000)) for item in items)
        for step in range(parts):
            yield [{"step": step, "text": "x" * size} for _ in batch]
        return [{"done": True, "parts": parts} for _ in batch]
