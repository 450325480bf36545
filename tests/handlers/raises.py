"""Raises on a request asking {"fail": true}; answers others."""
from lmjupyter.handlers import BaseHandler


class Raises(BaseHandler):
    def inference(self, batch):
        if any(isinstance(item, dict) and item.get("fail") for item in batch):
            raise ValueError("the model cannot take this input")
        return [{"ok": item} for item in batch]
