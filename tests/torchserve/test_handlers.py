"""Handlers written in TorchServe's idiom, imports untouched, answer as TorchServe answers.

One server; the models are built into .mar files by the real torch-model-archiver (or,
for one, deployed from its .py file) and deployed together at the start.
"""
import concurrent.futures
import json
import os

import pytest
import requests
import torch

from markit import HANDLERS, build_mar

CONFIG = "minWorkers: 1\nmaxWorkers: 1\ndeviceType: cpu\nstartupTimeout: 60\n"


@pytest.fixture(scope="module")
def models(ts_server):
    """Deploy every model of this module at once (each is one torchrun group of one rank)."""
    root = ts_server.root
    out = os.path.join(root, "mars")
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 2)
    scripted_path = os.path.join(root, "linear.pt")
    torch.jit.script(linear).save(scripted_path)
    weights_path = os.path.join(root, "weights.pth")
    state = {"fc.weight": linear.weight.detach().clone(), "fc.bias": linear.bias.detach().clone()}
    torch.save(state, weights_path)
    archives = [
        ("rows", "describe_rows.py", {"config": CONFIG + "myapp:\n  greeting: hi\n"}),  # a section of its own
        ("echo", "echo_raw.py", {"config": CONFIG}),
        ("stream", "echo_stream.py", {}),  # no model-config.yaml: TorchServe's initial_workers decides
        ("linear", "scripted.py", {"config": CONFIG, "serialized_file": scripted_path}),
        ("eager", "scripted.py", {"config": CONFIG, "serialized_file": weights_path,
                                  "model_file": os.path.join(HANDLERS, "eager_model.py")}),
    ]
    with concurrent.futures.ThreadPoolExecutor(len(archives)) as pool:
        list(pool.map(lambda a: build_mar(out, a[0], a[1], **a[2]), archives))
    client, url, headers = ts_server.client, ts_server.url, {"Authorization": f"Bearer {ts_server.token}"}

    def deploy(job):
        kind, name = job
        if kind == "native":  # lmjupyter's own deploy route, without a name: the archive's modelName
            return client.deploy(archive=f"mars/{name}.mar", wait=True)["state"]
        if kind == "file":  # a TorchServe handler from its .py file, no archive at all
            return client.deploy(name, os.path.join(HANDLERS, "old_stream.py"),
                                 config={"deviceType": "cpu"}, wait=True)["state"]
        answer = requests.post(url + "models", params={"url": f"mars/{name}.mar", "initial_workers": "1"},
                               headers=headers, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()["status"]

    jobs = [("native", "rows"), ("torchserve", "echo"), ("torchserve", "stream"), ("native", "linear"),
            ("native", "eager"), ("file", "words")]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        states = list(pool.map(deploy, jobs))
    assert states[0] == "ready" and states[1] == 'Model "echo" Version: 1.0 registered with 1 initial workers'
    assert set(states[3:]) == {"ready"}, states
    yield {"linear": linear}
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(client.undeploy, ("rows", "echo", "stream", "linear", "eager", "words")))


def _post(server, path, **kwargs):
    headers = {"Authorization": f"Bearer {server.token}", **kwargs.pop("headers", {})}
    return requests.post(server.url + path, headers=headers, timeout=60, **kwargs)


def test_rows_hold_json_text_bytes_and_form_parts_by_name(ts_server, models):
    def row(**kwargs):
        response = _post(ts_server, "predictions/rows", **kwargs)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert response.text == json.dumps(answer, indent=2)  # TorchServe's encoding of a dict
        assert answer["request_id"] == response.headers["x-request-id"]
        return answer["row"]

    assert row(json={"a": [1, 2]}) == {"body": {"dict": {"a": [1, 2]}}}
    assert row(data="héllo".encode(), headers={"Content-Type": "text/plain; charset=utf-8"}) == {"body": {"str": "héllo"}}
    assert row(data=b"\x00\xff", headers={"Content-Type": "application/octet-stream"}) == {"body": {"bytes": [0, 255]}}
    assert row(data=b"no type") == {"body": {"bytes": list(b"no type")}}  # no Content-Type: bytes, as TorchServe
    assert row(data=b"{not json", headers={"Content-Type": "application/json"}) == {"body": {"bytes": list(b"{not json")}}
    # multipart: each part under its name; files decoded by their type, plain fields stay bytes
    assert row(files={"data": ("x.jpg", b"\x01\x02", "image/jpeg"), "meta": ("m.json", b'{"k": 2}', "application/json")},
               data={"lang": "en"}) == {"data": {"bytes": [1, 2]}, "meta": {"dict": {"k": 2}}, "lang": {"bytes": [101, 110]}}
    assert row(data={"q": "x y"}) == {"q": {"bytes": list(b"x y")}}  # application/x-www-form-urlencoded


def test_context_has_headers_request_ids_and_torchserve_properties(ts_server, models):
    want = "x-custom,url_path,explain,body"
    answer = _post(ts_server, "predictions/rows/1.0/some/extra/path", json=[1],
                   headers={"X-Custom": "v", "X-Want": want}).json()
    assert answer["headers"] == {"x-custom": "v", "url_path": "some/extra/path", "explain": "False",
                                 "body": {"content-type": "application/json"}}
    assert "Authorization" not in answer["header_names"] and "User-Agent" in answer["header_names"]
    assert answer["manifest_model"] == "rows" and answer["myapp"] == {"greeting": "hi"}
    assert answer["system"] == {"batch_size": 1, "server_name": "lmjupyter", "limit_max_image_pixels": True}
    other = _post(ts_server, "predictions/rows", json=[1]).json()
    assert other["request_id"] != answer["request_id"]


def test_module_handle_answers_with_the_type_status_and_headers_it_sets(ts_server, models):
    text = _post(ts_server, "predictions/echo", data="plain words", headers={"Content-Type": "text/plain"})
    assert text.status_code == 200 and text.content == b"plain words"  # a str answer: its UTF-8 bytes
    csv = _post(ts_server, "predictions/echo", data=b"a,b\n1,2\n",
                headers={"Content-Type": "text/csv", "X-Answer-Type": "text/csv"})
    assert csv.headers["Content-Type"] == "text/csv" and csv.content == b"a,b\n1,2\n"
    raw = _post(ts_server, "predictions/echo", data=bytes(range(256)), headers={"Content-Type": "image/png"})
    assert raw.content == bytes(range(256))
    pretty = _post(ts_server, "predictions/echo", json={"x": [1, 2]})
    assert pretty.text == json.dumps({"x": [1, 2]}, indent=2)
    custom = _post(ts_server, "predictions/echo", json="ok", headers={"X-Answer-Status": "299", "X-Answer-Header": "yes"})
    assert (custom.status_code, custom.reason, custom.headers["X-From-Handler"]) == (299, "Made Up", "yes")
    failed = _post(ts_server, "predictions/echo", json="x", headers={"X-Fail": "1"})
    assert failed.status_code == 513 and failed.headers["x-request-id"]
    assert failed.json() == {"code": 513, "type": "InternalServerException", "message": "Some Prediction Error"}
    # lmjupyter's own route serves the same handler: rows and answers stay TorchServe's
    assert ts_server.client.predict("echo", "via native") == b"via native"


def test_streaming_as_torchserve_streams(ts_server, models):
    response = _post(ts_server, "predictions/stream", data="foo", stream=True)  # TorchServe's documented client
    assert response.headers["Transfer-Encoding"] == "chunked"
    chunks = [chunk.decode("utf-8") for chunk in response.iter_content(chunk_size=None) if chunk]
    assert chunks == ["intermediate_response"] * 3 + ["hello world "]
    words = _post(ts_server, "predictions/words", data="one two three", headers={"Content-Type": "text/plain"},
                  stream=True)
    assert [c.decode() for c in words.iter_content(chunk_size=None) if c] == ["one ", "two ", "three"]
    partials, final = ts_server.client.predict_stream("words", "four five")  # lmjupyter's NDJSON stream
    assert (partials, final) == (["four "], "five")


def test_default_initialize_loads_torchscript_and_eager_models(ts_server, models):
    x = [[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]]
    expected = models["linear"](torch.tensor(x)).tolist()
    for name in ("linear", "eager"):
        answers = [_post(ts_server, f"predictions/{name}", json=row).json() for row in x]
        assert answers == [pytest.approx(e, abs=1e-6) for e in expected], name
    _post(ts_server, "predictions/words", data="six seven", headers={"Content-Type": "text/plain"})
    metrics = requests.get(ts_server.url + "lmserve/metrics", headers={"Authorization": f"Bearer {ts_server.token}"},
                           timeout=30).text
    assert 'HandlerTime{Level="Model",ModelName="linear"}' in metrics  # TorchServe's BaseHandler.handle records it
    assert 'WordsStreamed_total{Kind="word",Level="Model",ModelName="words"}' in metrics


def test_unknown_models_answer_as_torchserve(ts_server, models):
    response = _post(ts_server, "predictions/nosuch", data=b"x")
    assert response.status_code == 404
    assert response.json() == {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: nosuch"}
    version = _post(ts_server, "predictions/rows/9.9", data=b"x")
    assert version.status_code == 404 and version.json()["type"] == "ModelVersionNotFoundException"
