"""``lmjupyter serve``'s fast predict path answers exactly as the ordinary PredictHandler does.

A query string sends a request the ordinary way (``?stream=0`` changes nothing else), so
each case is asked both ways and the answers compared.
"""
import socket

import requests

from serverproc import cpu_config, handler_path


def both_ways(server, path, data, headers):
    url = server.url + path
    fast = requests.post(url, data=data, headers=headers)
    ordinary = requests.post(url + "?stream=0", data=data, headers=headers)
    return fast, ordinary


def test_fast_path_answers_like_the_ordinary_handler(server):
    client = server.client
    client.deploy("fast", handler_path("echo.py"), config=cpu_config(batchSize=4), wait=True)
    client.deploy("fastraise", handler_path("raises.py"), config=cpu_config(), wait=True)
    auth = {"Authorization": f"token {server.token}"}
    cases = [
        ("lmserve/api/models/fast/predict", b'{"x": 1}', {**auth, "Content-Type": "application/json"}),
        ("lmserve/api/models/fast/predict", b"plain words", {**auth, "Content-Type": "text/plain"}),
        ("lmserve/api/models/fast/predict", b"{not json", {**auth, "Content-Type": "application/json"}),
        ("lmserve/api/models/fast/versions/1/predict", b'[1, 2]', {**auth, "Content-Type": "application/json"}),
        ("lmserve/api/models/fast/versions/9/predict", b'{}', auth),                       # no such version
        ("lmserve/api/models/nothere/predict", b'{}', auth),                               # no such model
        ("lmserve/api/models/fast/predict", b'{}', {"Authorization": "token wrong"}),      # 401
        ("lmserve/api/models/fast/predict", b'{}', {}),                                    # 401
        ("lmserve/api/models/fastraise/predict", b'{"fail": true}', {**auth, "Content-Type": "application/json"}),
    ]
    for path, data, headers in cases:
        fast, ordinary = both_ways(server, path, data, headers)
        assert fast.status_code == ordinary.status_code, (path, data, fast.text, ordinary.text)
        assert fast.headers["Content-Type"] == ordinary.headers["Content-Type"], (path, data)
        if "pid" not in fast.text:  # echo answers name the rank's pid; both come from the same worker
            assert fast.json().keys() == ordinary.json().keys(), (path, data, fast.text, ordinary.text)
        if fast.status_code == 200:
            assert fast.json()["echo"] == ordinary.json()["echo"]
        assert "Date" in fast.headers and int(fast.headers["Content-Length"]) == len(fast.content)
    client.undeploy("fast")
    client.undeploy("fastraise")


def test_fast_path_keeps_connections_alive_and_closes_them_when_asked(server):
    client = server.client
    client.deploy("alive", handler_path("echo.py"), config=cpu_config(), wait=True)
    host, port = server.url.split("//")[1].rstrip("/").split(":")
    request = (f"POST /lmserve/api/models/alive/predict HTTP/1.1\r\nHost: {host}\r\n"
               f"Authorization: token {server.token}\r\nContent-Type: application/json\r\n"
               "Content-Length: 8\r\n{extra}\r\n{{\"x\": 1}}")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        reader = sock.makefile("rb")
        for extra in ("", "", "Connection: close\r\n"):
            sock.sendall(request.format(extra=extra).encode())
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 200"), status
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = reader.read(int(headers["content-length"]))
            assert b'"echo": {"x": 1}' in body
        assert headers.get("connection") == "close" and reader.read() == b""   # the server closed it
    client.undeploy("alive")


def test_only_plain_authorized_predicts_of_deployed_models_take_the_fast_path():
    import asyncio
    import types

    from tornado import httputil

    from lmjupyter.engine.metrics import EngineMetrics
    from lmjupyter.errors import ApiError
    from lmjupyter.server import standalone

    class Engine:
        metrics = EngineMetrics()   # what FastPredict counts itself in

        def model(self, name, version=None):
            if name != "m":
                raise ApiError(404, f"no model named {name!r} is deployed")
            return types.SimpleNamespace(name=name, version=version)

    class Connection:
        def set_close_callback(self, callback):
            pass

    async def route(method, uri, authorization, length="2"):
        app = standalone.make_app(Engine(), "tk", max_body_size=1024)
        request = httputil.HTTPServerRequest(
            start_line=httputil.RequestStartLine(method, uri, "HTTP/1.1"),
            headers=httputil.HTTPHeaders({"Host": "127.0.0.1", **({"Authorization": authorization} if authorization else {}),
                                          **({"Content-Length": length} if length else {})}),
            connection=Connection())
        return type(app.find_handler(request)).__name__

    cases = {
        ("POST", "/lmserve/api/models/m/predict", "token tk"): "FastPredict",
        ("POST", "/lmserve/api/models/m/versions/2/predict", "Bearer tk"): "FastPredict",
        ("POST", "/lmserve/api/models/m/predict?stream=1", "token tk"): "_HandlerDelegate",
        ("POST", "/lmserve/api/models/m/predict?token=tk", None): "_HandlerDelegate",
        ("POST", "/lmserve/api/models/x/predict", "token tk"): "_HandlerDelegate",
        ("POST", "/lmserve/api/models/m/predict", "token no"): "_HandlerDelegate",
        ("POST", "/lmserve/api/models/m%2e/predict", "token tk"): "_HandlerDelegate",
        ("GET", "/lmserve/api/models/m/predict", "token tk"): "_HandlerDelegate",
        ("POST", "/lmserve/api/models/m", "token tk"): "_HandlerDelegate",
    }
    for (method, uri, authorization), expected in cases.items():
        assert asyncio.run(route(method, uri, authorization)) == expected, (method, uri, authorization)
    # bodies over the limit, or of unannounced size (chunked), go the streaming way that answers 413
    assert asyncio.run(route("POST", "/lmserve/api/models/m/predict", "token tk", length="1025")) == "_HandlerDelegate"
    assert asyncio.run(route("POST", "/lmserve/api/models/m/predict", "token tk", length=None)) == "_HandlerDelegate"
