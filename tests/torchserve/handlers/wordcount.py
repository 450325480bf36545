"""Counts the words of each request, text or an uploaded file, as a TorchServe handler."""
from ts.torch_handler.base_handler import BaseHandler


class WordCount(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def preprocess(self, data):
        texts = []
        for row in data:
            value = row.get("data") or row.get("body")
            texts.append(value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value)
        return texts

    def inference(self, texts):
        return [len(text.split()) for text in texts]

    def postprocess(self, counts):
        return [f"{count} words" for count in counts]
