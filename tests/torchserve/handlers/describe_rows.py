"""A class-level entry point as TorchServe's custom-service docs write one: no base class, no ts import.

It answers what TorchServe hands it, per request: the row's keys and values (bytes
as lists of ints), the request id, and the headers asked for with X-Want.
"""
import json


class ModelHandler(object):
    def __init__(self):
        self._context = None
        self.initialized = False

    def initialize(self, context):
        self.manifest = context.manifest
        properties = context.system_properties
        self.model_dir = properties.get("model_dir")
        self.batch_size = properties.get("batch_size")
        self.initialized = True

    def handle(self, data, context):
        answers = []
        for idx, row in enumerate(data):
            wanted = context.get_request_header(idx, "X-Want") or ""
            answers.append({
                "row": {name: _plain(value) for name, value in row.items()},
                "request_id": context.get_request_id(idx),
                "headers": {name: context.get_request_header(idx, name) for name in wanted.split(",") if name},
                "header_names": sorted(k for k in context.get_all_request_header(idx) if isinstance(k, str)),
                "manifest_model": self.manifest["model"]["modelName"],
                "myapp": context.model_yaml_config.get("myapp"),
                "system": {k: context.system_properties[k] for k in ("batch_size", "server_name",
                                                                      "limit_max_image_pixels")},
            })
        return answers


def _plain(value):
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": list(value)}
    return {type(value).__name__: value}


json  # imported as handlers often do
