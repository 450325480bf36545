"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

OpenAI clients read ``type`` and ``code`` (and the status: the ``openai`` package raises
``BadRequestError`` for 400, ``NotFoundError`` for 404, retries 429 and 5xx), so every
refusal of the /v1 routes, native ones included, is turned into this shape here.
"""
from __future__ import annotations

import json

# status -> (type, code) when the refusal has no more specific code
_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    499: ("invalid_request_error", "cancelled"),
    502: ("server_error", "worker_failed"),
    503: ("server_error", "overloaded"),
    504: ("server_error", "timeout"),
}


class OpenAIError(Exception):
    """A refused /v1 call: ``status``, the message, and the request parameter at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param
        kind, default_code = _KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        self.type, self.code = kind, code or default_code

    def to_dict(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return json.dumps(self.to_dict()).encode()


def unsupported(param: str, why: str = "") -> OpenAIError:
    return OpenAIError(400, f"{param} is not supported by this server{': ' + why if why else ''}",
                       param=param, code="unsupported_parameter")


def invalid(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, f"{param}: {message}", param=param, code="invalid_value")


def from_native(status: int, body: bytes, rename: dict[str, str] | None = None) -> OpenAIError:
    """A native error answer (``{"error": {"message", "param"?}}``) as an OpenAIError;
    ``rename`` maps the native request's field names back to the OpenAI parameter names."""
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    message = error.get("message") if isinstance(error, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    if param is not None and rename:
        param = rename.get(param, param)
    return OpenAIError(status, message or body.decode("utf-8", "replace")[:500] or f"HTTP {status}", param=param)
