"""Hangs on a request asking {"hang": true}; answers others at once."""
import os
import time

from lmjupyter.handlers import BaseHandler


class Hang(BaseHandler):
    def inference(self, batch):
        if any(isinstance(item, dict) and item.get("hang") for item in batch):
            time.sleep(3600)
        return [{"ok": True, "pid": os.getpid()} for _ in batch]
