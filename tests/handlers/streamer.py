"""Yields five partial results per request, 0.4 s apart, then the joined answer."""
import time

from lmjupyter.handlers import BaseHandler


class Streamer(BaseHandler):
    def inference(self, batch):
        for step in range(5):
            time.sleep(0.4)
            yield [{"step": step, "at": time.time()} for _ in batch]
        return [{"done": True, "steps": 5, "at": time.time()} for _ in batch]
