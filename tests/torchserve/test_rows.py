"""TorchServe's request rows, context and metrics cache as a rank builds them (no server needed)."""
import json

import pytest

from lmjupyter.compat.torchserve import rows
from lmjupyter.compat.torchserve.context import Context, RequestHeaders
from lmjupyter.compat.torchserve.metrics import Dimension, MetricsCache, MetricsCacheError, MetricTypes


def _context(processors, ids) -> Context:
    context = Context("m", "/models/m", {"model": {"modelName": "m"}}, 4, None, "0.1", metrics=MetricsCache("m"))
    context.request_processor, context.request_ids = processors, ids
    return context


def test_unreadable_requests_are_refused_alone():
    items = [(b"--x\r\n", "multipart/form-data", None), (b'"ok"', "application/json", None)]
    batch_rows, processors, ids, positions, bad = rows.request_rows(items)
    assert batch_rows == [{"body": "ok"}] and positions == [1] and list(ids) == [0]
    assert list(bad) == [0] and "multipart" in bad[0]


def test_decoding_can_be_turned_off_as_in_torchserve(monkeypatch):
    monkeypatch.setenv("TS_DECODE_INPUT_REQUEST", "false")
    assert not rows.decode_inputs()
    batch_rows, *_ = rows.request_rows([(b'{"a": 1}', "application/json", None)], decode=rows.decode_inputs())
    assert batch_rows == [{"body": b'{"a": 1}'}]


def test_headers_are_found_in_any_case_and_answers_carry_what_the_handler_set():
    meta = {"id": "r-1", "headers": [("Content-Type", "text/plain"), ("X-Trace", "t")]}
    batch_rows, processors, ids, _, _ = rows.request_rows([(b"hi", "text/plain", meta)])
    context = _context(processors, ids)
    assert batch_rows == [{"body": "hi"}] and context.get_request_id(0) == "r-1"
    assert context.get_request_header(0, "x-trace") == context.get_request_header(0, "X-TRACE") == "t"
    assert context.get_request_header(0, "body") == {"content-type": "text/plain"}
    assert rows.encode_answer("é", 0, context) == (200, rows.TEXT, "é".encode())
    context.set_response_status(418, "Teapot", 0)
    context.set_response_header(0, "Content-Type", "application/x-tea")
    context.set_response_header(0, "X-Pot", "1")
    assert rows.encode_answer({"a": 1}, 0, context) == (
        418, "application/x-tea", json.dumps({"a": 1}, indent=2).encode(), {"phrase": "Teapot", "headers": {"X-Pot": "1"}})
    status, _, body, extra = rows.encode_answer(object(), 0, context)
    assert status == 503 and extra["error_type"] and b"Unsupported model output" in body
    headers = RequestHeaders({"A": 1})
    assert "a" in headers and headers["a"] == 1 and headers.get("missing") is None


def test_metrics_follow_torchserve_defaults_and_refuse_changed_dimensions():
    cache = MetricsCache("m")
    cache.add_time("HandlerTime", 1.5, None, "ms")
    cache.add_counter("Seen", 2, dimensions=[Dimension("Kind", "a")])
    cache.add_error("Oops", 1)
    cache.get_metric("Seen", MetricTypes.COUNTER).add_or_update(3, ["b", "m", "Model"])
    assert cache.drain() == [
        ("HandlerTime", "gauge", "ms", ("ModelName", "Level"), ("m", "Model"), 1.5),
        ("Seen", "counter", "count", ("Kind", "ModelName", "Level"), ("a", "m", "Model"), 2.0),
        ("Oops", "counter", "", ("Level",), ("Error",), 1.0),
        ("Seen", "counter", "count", ("Kind", "ModelName", "Level"), ("b", "m", "Model"), 3.0),
    ]
    assert cache.drain() == []
    with pytest.raises(MetricsCacheError, match="first used with dimensions"):
        cache.add_counter("Seen", 1)
    with pytest.raises(MetricsCacheError, match="unit"):
        cache.add_time("T", 1, unit="h")
