"""TorchServe's ``Context`` (``ts.context``): what a TorchServe-style handler is given.

The constructor takes TorchServe's arguments, so a handler's own tests that build
one keep working. Built for a worker by :func:`context_for`, it also carries
lmjupyter's ``rank``, ``local_rank``, ``world_size`` and ``device``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple

from lmjupyter.compat.torchserve.metrics import MetricsCache


class Context:
    """Model facts fixed at load, plus the current batch's request ids, headers and answers."""

    def __init__(self, model_name, model_dir, manifest, batch_size, gpu, mms_version,
                 limit_max_image_pixels=True, metrics=None, model_yaml_config=None):
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {
            "model_dir": model_dir, "gpu_id": gpu, "batch_size": batch_size, "server_name": "lmjupyter",
            "server_version": mms_version, "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.request_ids = None
        self.request_processor = None
        self.metrics = metrics
        self.model_yaml_config = model_yaml_config if model_yaml_config is not None else {}
        self.stopping_criteria = None
        self.cl_socket = None  # TorchServe's socket to its frontend; lmjupyter streams through send_intermediate
        self.header_key_sequence_id = os.getenv("TS_REQUEST_SEQUENCE_ID", "ts_request_sequence_id")
        self.header_key_sequence_start = os.getenv("TS_REQUEST_SEQUENCE_START", "ts_request_sequence_start")
        self.header_key_sequence_end = os.getenv("TS_REQUEST_SEQUENCE_END", "ts_request_sequence_end")
        # lmjupyter's facts about this rank
        self.rank, self.local_rank, self.world_size, self.device = 0, 0, 1, "cpu"
        self.model_version = None
        self._stream: Callable[[list, dict], None] | None = None  # set by the adapter for each batch

    @property
    def system_properties(self) -> dict:
        return self._system_properties

    @property
    def model_dir(self) -> str:
        return self._system_properties["model_dir"]

    # ---- requests of the current batch ----------------------------------------------------------
    def get_request_id(self, idx: int = 0) -> Optional[str]:
        return None if self.request_ids is None else self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> Optional[str]:
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> Dict[str, str]:
        return self.request_processor[idx].get_request_properties()

    def get_sequence_id(self, idx: int) -> str:
        return self.request_processor[idx].get_request_property(self.header_key_sequence_id)

    # ---- answers ------------------------------------------------------------------------------
    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> Optional[str]:
        return self.get_response_headers(idx).get("content-type")

    def get_response_status(self, idx: int) -> Tuple[int, str]:
        processor = self.request_processor[idx]
        return processor.get_response_status_code(), processor.get_response_status_phrase()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0):
        """The HTTP status (and reason phrase) of request ``idx`` of the batch."""
        if self.request_processor is not None and self.request_processor[idx] is not None:
            self.request_processor[idx].report_status(code, reason_phrase=phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for processor in self.request_processor or ():
            processor.report_status(code, reason_phrase=phrase)

    def get_response_headers(self, idx: int) -> Dict[str, str]:
        return self.request_processor[idx].get_response_headers()

    def set_response_header(self, idx, key, value):
        self.request_processor[idx].add_response_property(key, value)

    def send_intermediate(self, ret: list, req_id_map: dict) -> None:
        """What ``send_intermediate_predict_response`` does: stream ``ret[idx]`` for each idx now."""
        if self._stream is not None:
            self._stream(ret, req_id_map)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Context) and self.__dict__ == other.__dict__

    __hash__ = object.__hash__


class RequestHeaders(dict):
    """A request's headers (and its parameters' content types) as TorchServe hands them over.

    TorchServe's frontend keeps header names as the client sent them; lmjupyter's HTTP
    layer normalises their case, so look-ups here ignore case: ``"content-type"``,
    ``"Content-Type"`` and ``"CONTENT-TYPE"`` all find the header.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._names = {k.lower(): k for k in self if isinstance(k, str)}

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if isinstance(key, str):
            self._names[key.lower()] = key

    def _name(self, key):
        if dict.__contains__(self, key) or not isinstance(key, str):
            return key
        return self._names.get(key.lower(), key)

    def __getitem__(self, key):
        return super().__getitem__(self._name(key))

    def __contains__(self, key):
        return super().__contains__(self._name(key))

    def get(self, key, default=None):
        return super().get(self._name(key), default)


class RequestProcessor:
    """One request's headers in, and its answer's status and headers out."""

    def __init__(self, request_header: dict) -> None:
        self._status_code = 200
        self._reason_phrase = None
        self._response_header: Dict[str, str] = RequestHeaders()
        self._request_header = request_header

    def get_request_property(self, key: str) -> Optional[Any]:
        return self._request_header.get(key)

    def get_request_properties(self) -> dict:
        return self._request_header

    def report_status(self, code, reason_phrase=None) -> None:
        self._status_code = code
        self._reason_phrase = reason_phrase

    def get_response_status_code(self) -> int:
        return self._status_code

    def get_response_status_phrase(self) -> Optional[str]:
        return self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self._response_header[key] = value

    def get_response_headers(self) -> dict:
        return self._response_header

    def get_response_header(self, key: str) -> Optional[str]:
        return self._response_header.get(key)


def torchserve_manifest(manifest: dict | None, model_name: str, version: str | None, handler: str | None) -> dict:
    """The archive's manifest in TorchServe's shape; one made up (as torch-model-archiver would) without one."""
    manifest = dict(manifest or {})
    model = dict(manifest.get("model") or {})
    model.setdefault("modelName", model_name)
    if version:
        model.setdefault("modelVersion", version)
    if handler:
        model.setdefault("handler", os.path.basename(handler.rpartition(":")[0] if ":" in handler
                                                     and handler.rpartition(":")[2].isidentifier() else handler))
    manifest["model"] = model
    manifest.setdefault("runtime", "python")
    return manifest


def context_for(ctx, handler_spec: str | None = None) -> Context:
    """A TorchServe context for a worker, from lmjupyter's (:class:`lmjupyter.worker.context.Context`)."""
    props = ctx.system_properties
    version = getattr(ctx, "model_version", None)
    context = Context(ctx.model_name, ctx.model_dir,
                      torchserve_manifest(ctx.manifest, ctx.model_name, version, handler_spec),
                      props.get("batch_size", 1), props.get("gpu_id"), props.get("server_version", ""),
                      props.get("limit_max_image_pixels", True), MetricsCache(ctx.model_name), ctx.model_yaml_config)
    context.rank, context.local_rank, context.world_size, context.device = (
        ctx.rank, ctx.local_rank, ctx.world_size, ctx.device)
    context.model_version = version
    return context
