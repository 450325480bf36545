"""Requests in and answers out, as TorchServe's frontend and worker make them.

In: each request becomes a row, a dict of its parameters by name: the body as
``"body"``, or for ``multipart/form-data`` and ``application/x-www-form-urlencoded``
each form field and file by its own name (``curl -F data=@x.jpg`` gives
``row["data"]``). A value whose content type is ``application/json`` is decoded,
``text/*`` becomes str, anything else (form fields included) stays bytes, unless
``TS_DECODE_INPUT_REQUEST=false``. Its headers dict holds the request's headers
and, under each parameter's name, ``{"content-type": ...}``.

Out: bytes as they are, str as UTF-8, a tensor as ``torch.save`` bytes, anything
else as ``json.dumps(value, indent=2)``; with the status, reason phrase, content
type and headers the handler set through the context.
"""
from __future__ import annotations

import io
import json
import os
import sys
import traceback
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qsl

from lmjupyter.compat.torchserve.context import RequestHeaders, RequestProcessor

JSON = "application/json"
OCTETS = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"
STREAM_NEXT = "ts_stream_next"  # TorchServe's marker header of streamed answers; never sent to clients


def request_rows(items: list[tuple], decode: bool = True):
    """Rows, request processors, ``{index: request id}`` and the positions in ``items`` they came from,
    for one batch of raw requests; plus ``{position: message}`` of the requests that cannot be read."""
    rows, processors, ids, positions, bad = [], [], {}, [], {}
    for position, (payload, content_type, meta) in enumerate(items):
        meta = meta or {}
        try:
            parameters = _parameters(payload, _sent_type(content_type, meta.get("headers")))
        except ValueError as exc:
            bad[position] = f"request body cannot be read: {exc}"
            continue
        row, headers = {}, RequestHeaders()
        for name, value_type, value in parameters:
            row[name] = _decoded(value, value_type) if decode else value
            headers[name] = {"content-type": value_type}
        for name, value in meta.get("headers") or [("Content-Type", content_type)]:
            headers[name] = value
        ids[len(rows)] = meta.get("id") or str(uuid.uuid4())
        rows.append(row)
        processors.append(RequestProcessor(headers))
        positions.append(position)
    return rows, processors, ids, positions, bad


def _sent_type(content_type: str, headers) -> str:
    """The Content-Type the client sent ("" for none: TorchServe then hands over bytes)."""
    if not headers:
        return content_type or ""
    return next((value for name, value in headers if name.lower() == "content-type"), "")


def _mime(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _parameters(payload: bytes, content_type: str) -> list[tuple[str, str, bytes]]:
    """(name, content type, bytes) of each parameter, in the order they came."""
    mime = _mime(content_type)
    if mime == "multipart/form-data":
        return _multipart(payload, content_type)
    if mime == "application/x-www-form-urlencoded":
        return [(name.decode("utf-8", "replace"), "", value)
                for name, value in parse_qsl(payload, keep_blank_values=True)]
    return [("body", mime, payload)]


def _multipart(payload: bytes, content_type: str) -> list[tuple[str, str, bytes]]:
    """Form fields (bytes, no content type) and files (with theirs) of a multipart body."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1")
                                                  + b"\r\n\r\n" + payload)
    if not message.is_multipart():
        raise ValueError("multipart/form-data body without parts (a missing or wrong boundary)")
    parts = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name is None:
            continue
        body = part.get_payload(decode=True) or b""
        if part.get_filename() is None:
            parts.append((name, "", body))  # a form field, as Netty hands it over: bytes
        else:
            declared = part.get("Content-Type")
            parts.append((name, _mime(str(declared)) if declared else OCTETS, body))
    return parts


def _decoded(value: bytes, content_type: str):
    if content_type == JSON:
        try:
            return json.loads(value.decode("utf-8"))
        except ValueError:
            return value  # TorchServe forwards what it cannot decode
    if content_type.startswith("text"):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def decode_inputs() -> bool:
    return os.environ.get("TS_DECODE_INPUT_REQUEST", "true") == "true"


# ---- answers ---------------------------------------------------------------------------------
def encode_answer(value, idx: int, context) -> tuple:
    """(status, content type, body[, extra]) of one answer; extra: reason phrase and headers."""
    processor = context.request_processor[idx]
    status = processor.get_response_status_code() or 200
    phrase = processor.get_response_status_phrase()
    headers = {k: v for k, v in processor.get_response_headers().items() if k.lower() != STREAM_NEXT}
    declared = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    if isinstance(value, BaseException):
        return error_answer(500, f"{type(value).__name__}: {value}",
                            "".join(traceback.format_exception(value)))
    try:
        body, default_type = _body(value)
    except (TypeError, ValueError) as exc:
        return error_answer(503, f"Unsupported model output data type: {exc}")
    extra = {}
    if phrase:
        extra["phrase"] = str(phrase)
    others = {k: str(v) for k, v in headers.items() if k.lower() != "content-type"}
    if others:
        extra["headers"] = others
    answer = (int(status), declared or default_type, body)
    return answer + (extra,) if extra else answer


def _body(value) -> tuple[bytes, str]:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), OCTETS
    if isinstance(value, str):
        return value.encode("utf-8"), TEXT
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue(), OCTETS
    return json.dumps(value, indent=2).encode("utf-8"), JSON


def error_answer(status: int, message: str, traceback_text: str | None = None) -> tuple:
    """An error as lmjupyter's routes show it; TorchServe's routes turn it into TorchServe's shape."""
    error = {"message": message}
    if traceback_text:
        error["traceback"] = traceback_text
    return status, JSON, json.dumps({"error": error}).encode(), {"error_type": "InternalServerException"}
