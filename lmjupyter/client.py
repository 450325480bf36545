"""Python client of the REST API; the magics and widgets are built on it.

    from lmjupyter import Client
    client = Client("http://127.0.0.1:8765", token="...")
    client.deploy("echo", handler="echo.py", config={"deviceType": "cpu"}, wait=True)
    client.predict("echo", {"text": "hi"})
    for partial in client.stream("llm", {"prompt": "Once"}):
        print(partial)
    for piece in client.chat_stream("llm", [{"role": "user", "content": "hi"}]):
        print(piece, end="")
    client.undeploy("echo")
"""
from __future__ import annotations

import json
from typing import Any, Iterator

import requests


class LMServeError(RuntimeError):
    """The server refused or failed a call; ``status`` and ``detail`` say why."""

    def __init__(self, status: int, message: str, detail: dict | None = None):
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status = status
        self.message = message
        self.detail = detail or {}


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 600.0,
                 session: requests.Session | None = None):
        self.url = url.rstrip("/") + "/"
        self.token = token
        self.timeout = timeout
        self.session = session or requests.Session()
        if token:
            self.session.headers["Authorization"] = f"token {token}"

    # ---- models ------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._call("GET", "lmserve/api/health")

    def list(self) -> list[dict]:
        return self._call("GET", "lmserve/api/models")["models"]

    def describe(self, name: str, version: str | None = None) -> dict:
        """The default version (or ``version``), with the list of ``versions``."""
        return self._call("GET", _model_path(name, version))

    def restore_errors(self) -> list[dict]:
        """Models of the registry snapshot that did not come back at the server's start, and why."""
        return self._call("GET", "lmserve/api/models").get("restore_errors", [])

    def deploy(self, name: str | None = None, handler: str | None = None, *, model_dir: str | None = None,
               archive: str | None = None, config: dict | str | None = None, config_file: str | None = None,
               workers: int | None = None, wait: bool = False, dry_run: bool = False,
               version: str | None = None, install_requirements: bool | None = None,
               **extra: Any) -> dict:
        """Deploy a model; with an ``archive``, ``name`` may be left out (the archive's modelName)."""
        body = {"name": name, "handler": handler, "model_dir": model_dir, "archive": archive,
                "config": config, "config_file": config_file, "workers": workers,
                "wait": wait, "dry_run": dry_run, "version": version,
                "install_requirements": install_requirements, **extra}
        return self._call("POST", "lmserve/api/models", json={k: v for k, v in body.items() if v is not None})

    def scale(self, name: str, workers: int, version: str | None = None) -> dict:
        return self._call("PUT", _model_path(name, version), json={"workers": workers})

    def undeploy(self, name: str, version: str | None = None) -> dict:
        """Undeploy one version, or every version of the model when ``version`` is None."""
        return self._call("DELETE", _model_path(name, version))

    def set_default(self, name: str, version: str) -> dict:
        """Route /models/{name} (and its predict) to ``version``."""
        return self._call("PUT", _model_path(name, version) + "/default")

    def logs(self, name: str, rank: int | None = None, tail: int = 100, version: str | None = None) -> list[dict]:
        params = {"tail": tail, **({"rank": rank} if rank is not None else {})}
        return self._call("GET", _model_path(name, version) + "/logs", params=params)["logs"]

    def events(self, name: str, after: int = 0, version: str | None = None) -> dict:
        """Start-up events with ``seq`` > ``after``: ``{"events": [...], "last": seq, "state": ...}``;
        pass ``last`` back as ``after`` to get only what happened since."""
        return self._call("GET", _model_path(name, version) + "/events", params={"after": after})

    def gpus(self) -> list[dict]:
        return self._call("GET", "lmserve/api/gpus")["gpus"]

    def nodes(self) -> list[dict]:
        """This server's host and the ``lmjupyter node`` agents registered with it."""
        return self._call("GET", "lmserve/api/nodes")["nodes"]

    def metrics(self) -> str:
        response = self.session.get(self.url + "lmserve/metrics", timeout=self.timeout)
        _raise_for(response)
        return response.text

    # ---- inference ---------------------------------------------------------------------------
    def predict(self, name: str, data: Any = None, *, path: str | None = None, version: str | None = None) -> Any:
        """One request (to the default version unless ``version``); JSON values in and out, bytes stay bytes."""
        response = self.session.post(self.url + (path or _model_path(name, version) + "/predict"),
                                     timeout=self.timeout, **_body(data))
        _raise_for(response)
        if response.headers.get("Content-Type", "").startswith("application/json"):
            return response.json()
        return response.content

    def stream(self, name: str, data: Any = None, version: str | None = None) -> Iterator[Any]:
        """Yield the handler's partial results as they arrive (the generator returns the final answer)."""
        final = None
        for kind, value in self._stream_lines(name, data, version):
            if kind == "partial":
                yield value
            else:
                final = value
        return final

    def predict_stream(self, name: str, data: Any = None, version: str | None = None) -> tuple[list[Any], Any]:
        """All partial results and the final answer of one streamed request."""
        partials, final = [], None
        for kind, value in self._stream_lines(name, data, version):
            if kind == "partial":
                partials.append(value)
            else:
                final = value
        return partials, final

    def _stream_lines(self, name: str, data: Any, version: str | None = None) -> Iterator[tuple[str, Any]]:
        with self.session.post(self.url + _model_path(name, version) + "/predict", params={"stream": "1"},
                               stream=True, timeout=self.timeout, **_body(data)) as response:
            _raise_for(response)
            for line in response.iter_lines():
                if not line:
                    continue
                message = json.loads(line)
                if "error" in message:
                    error = message["error"]
                    raise LMServeError(error.get("status", 500), error.get("message", "stream failed"), error)
                kind = "partial" if "partial" in message else "result"
                yield kind, message.get(kind)

    def chat_stream(self, model: str, messages: list[dict], **params: Any) -> Iterator[str]:
        """Stream a chat answer through the OpenAI route (``lmserve/v1/chat/completions``, both servers):
        yield its text pieces; the generator returns ``{"content", "finish_reason", "usage"}``."""
        body = {"model": model, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}, **params}
        content, finish, usage = [], None, None
        with self.session.post(self.url + "lmserve/v1/chat/completions", json=body, stream=True,
                               timeout=self.timeout) as response:
            _raise_for(response)
            for line in response.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise LMServeError(500, chunk["error"].get("message", "stream failed"), chunk["error"])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    piece = choice.get("delta", {}).get("content")
                    finish = choice.get("finish_reason") or finish
                    if piece:
                        content.append(piece)
                        yield piece
        return {"content": "".join(content), "finish_reason": finish, "usage": usage}

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise LMServeError(0, f"cannot reach the lmjupyter server at {self.url}: {exc}") from None
        _raise_for(response)
        return response.json()


def _model_path(name: str, version: str | None) -> str:
    path = f"lmserve/api/models/{name}"
    return path if version is None else f"{path}/versions/{version}"


def _body(data: Any) -> dict:
    if isinstance(data, (bytes, bytearray)):
        return {"data": bytes(data), "headers": {"Content-Type": "application/octet-stream"}}
    return {"data": json.dumps(data).encode(), "headers": {"Content-Type": "application/json"}}


def _raise_for(response: requests.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {"message": response.text[:500]}
    raise LMServeError(response.status_code, error.get("message", response.reason), error)
