"""Turning request bytes into handler input and handler output into response bytes.

This is the one JSON decode and the one JSON encode a request costs; the server
passes bytes through untouched.
"""
from __future__ import annotations

import json
import traceback
from typing import Any

from lmjupyter.handlers.base import RequestError

JSON = "application/json"
BYTES = "application/octet-stream"


class BadRequestBody(ValueError):
    """A body sent as JSON that is not JSON; answered with 400 for that request alone."""


JSON_LIKE = (JSON, "application/x-www-form-urlencoded")  # curl -d sends the latter


def decode_request(payload: bytes, content_type: str) -> Any:
    """JSON bodies become Python values, text becomes str, anything else stays bytes."""
    if not content_type or content_type.startswith(JSON_LIKE):
        try:
            return json.loads(payload) if payload else None
        except ValueError as exc:
            if content_type.startswith(JSON):
                return BadRequestBody(f"request body is not valid JSON: {exc}")
    if content_type.startswith("text/"):
        return payload.decode("utf-8", "replace")
    return payload


def encode_answers(answers: list[Any]) -> list[tuple[int, str, bytes]]:
    return [encode_answer(a) for a in answers]


def encode_answer(answer: Any) -> tuple[int, str, bytes]:
    if isinstance(answer, (bytes, bytearray, memoryview)):
        return 200, BYTES, bytes(answer)
    if isinstance(answer, BadRequestBody):
        return 400, JSON, _error_body(str(answer))
    if isinstance(answer, RequestError):
        return 400, JSON, _error_body(str(answer), param=answer.param)
    if isinstance(answer, BaseException):
        status = getattr(answer, "status", None)
        if isinstance(status, int) and 400 <= status < 600 and status != 500:  # the handler's refusal, e.g. 400
            return status, JSON, _error_body(str(answer))
        detail = "".join(traceback.format_exception(answer))
        return 500, JSON, _error_body(f"{type(answer).__name__}: {answer}", detail)
    try:
        return 200, JSON, json.dumps(answer).encode()
    except (TypeError, ValueError) as exc:
        return 500, JSON, _error_body(f"handler answer is not JSON-serialisable: {exc}")


def _error_body(message: str, traceback_text: str | None = None, param: str | None = None) -> bytes:
    error = {"message": message}
    if param:
        error["param"] = param
    if traceback_text:
        error["traceback"] = traceback_text
    return json.dumps({"error": error}).encode()
