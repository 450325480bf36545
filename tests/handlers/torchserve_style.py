"""A handler written the TorchServe way, imports included: it runs as it would in TorchServe."""
from ts.torch_handler.base_handler import BaseHandler


class WordCounter(BaseHandler):
    def initialize(self, context):
        self.manifest = context.manifest
        properties = context.system_properties
        self.model_dir = properties.get("model_dir")
        self.batch_size = properties.get("batch_size")
        self.prefix = context.model_yaml_config["handler"]["prefix"]
        self.initialized = True

    def preprocess(self, data):
        return [row.get("data") or row.get("body") for row in data]

    def inference(self, inputs):
        return [len(text.split()) for text in inputs]

    def postprocess(self, outputs):
        return [f"{self.prefix}{count}" for count in outputs]
