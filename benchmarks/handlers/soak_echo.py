"""The soak's model: answers each request with itself; a request with "parts": N streams N partials first."""
import time

from lmjupyter.handlers import BaseHandler


class SoakEcho(BaseHandler):
    def inference(self, batch):
        parts = max((item.get("parts", 0) for item in batch if isinstance(item, dict)), default=0)
        for step in range(parts):
            time.sleep(0.02)
            yield [{"step": step} for _ in batch]
        return batch
