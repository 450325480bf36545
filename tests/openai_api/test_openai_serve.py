"""OpenAI's API on ``lmjupyter serve``, called with the real ``openai`` package.

Greedy answers are checked against the native predict route of the same model,
which is the contract the /v1 routes translate to.
"""
import concurrent.futures
import re

import httpx
import openai
import pytest
import requests
from openai import OpenAI

from serverproc import wait_until
from v1kit import MODEL, PATH, PROMPT, without_chat_template

pytestmark = pytest.mark.timeout(180)
CHAT = [{"role": "user", "content": "Hello there"}]


def client_for(server, api_key=None, prefix="v1") -> OpenAI:
    return OpenAI(base_url=server.url + prefix, api_key=api_key or server.token, max_retries=0, timeout=60)


def test_models_lists_the_causal_lms_only(llm_server):
    client = client_for(llm_server)
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL]  # the echo model is not a causal LM
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve(f"{MODEL}:1").id == f"{MODEL}:1"


def test_completion_is_the_native_answer(llm_server):
    native = llm_server.client.predict(MODEL, {"prompt": PROMPT, "max_new_tokens": 6})
    for prefix in ("v1", "lmserve/v1"):  # the root alias and the path Jupyter has too
        answer = client_for(llm_server, prefix=prefix).completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
        assert answer.object == "text_completion" and answer.model == MODEL
        assert answer.choices[0].text == native["text"]
        assert answer.choices[0].finish_reason == native["finish_reason"]
        assert answer.usage.prompt_tokens == native["prompt_tokens"]
        assert answer.usage.completion_tokens == len(native["token_ids"]) == 6
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + 6


def test_streamed_completion_joins_to_the_whole_one(llm_server):
    client = client_for(llm_server)
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].finish_reason is None]
    assert "".join(pieces) == whole.choices[0].text
    assert len(pieces) == whole.usage.completion_tokens  # one chunk per token
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_whole_and_streamed(llm_server):
    client = client_for(llm_server)
    native = llm_server.client.predict(MODEL, {"messages": CHAT, "max_new_tokens": 7})
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=7, temperature=0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == native["text"]
    assert whole.usage.prompt_tokens == native["prompt_tokens"] and whole.usage.completion_tokens == 7
    stream = client.chat.completions.create(model=MODEL, messages=CHAT, max_completion_tokens=7, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage == whole.usage


def test_bad_parameters_name_the_parameter(llm_server):
    client = client_for(llm_server)
    cases = [
        (dict(frequency_penalty=0.5), "frequency_penalty"),
        (dict(logit_bias={"1": 5}), "logit_bias"),
        (dict(temperature=5), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(n=0), "n"),
        (dict(max_tokens=-1), "max_tokens"),
        (dict(stop=[""]), "stop"),
        (dict(extra_body={"not_a_parameter": 1}), "not_a_parameter"),
        (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), "tools"),
        (dict(stream_options={"include_usage": True}), "stream_options"),  # without stream
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=CHAT, **kwargs)
        error = info.value.body
        assert info.value.status_code == 400 and error["param"] == param, (kwargs, error)
        assert error["type"] == "invalid_request_error" and error["message"], error
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=[], max_tokens=2)
    assert info.value.body["param"] == "prompt"


def test_unknown_model_non_llm_and_wrong_key(llm_server):
    client = client_for(llm_server)
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="nosuch", prompt="x", max_tokens=2)
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=f"{MODEL}:9", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="echo", messages=CHAT)
    assert "not a causal LM" in info.value.body["message"] and info.value.body["param"] == "model"
    with pytest.raises(openai.AuthenticationError) as info:
        client_for(llm_server, api_key="wrong").models.list()
    assert info.value.body["code"] == "invalid_api_key"
    raw = requests.post(llm_server.url + "v1/completions", data="{oops", timeout=30,
                        headers={"Authorization": f"Bearer {llm_server.token}"})
    assert raw.status_code == 400 and set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_chat_without_a_template_is_refused(llm_server, tmp_path):
    from lmjupyter.models.tiny import build_tiny_llama

    model_dir = build_tiny_llama(llm_server.root + "/plain", num_layers=1, hidden=32, heads=4, kv_heads=2)
    without_chat_template(model_dir)
    llm_server.client.deploy("plain", model_dir=str(model_dir), wait=True,
                             config={"deviceType": "cpu", "handler": {"max_new_tokens": 4}, **PATH})
    try:
        client = client_for(llm_server)
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(model="plain", messages=CHAT, stream=stream)
            assert "chat template" in info.value.body["message"] and info.value.body["param"] == "messages"
        assert client.completions.create(model="plain", prompt="x", max_tokens=2).usage.completion_tokens == 2
    finally:
        llm_server.client.undeploy("plain")


def test_curl_style_sse_frames(llm_server):
    """The bytes on the wire: ``data: {json}`` frames, then ``data: [DONE]``."""
    with httpx.stream("POST", llm_server.url + "v1/completions", timeout=60,
                      headers={"Authorization": f"Bearer {llm_server.token}"},
                      json={"model": MODEL, "prompt": PROMPT, "max_tokens": 3, "temperature": 0,
                            "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    frames = body.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    assert all(f.startswith("data: {") for f in frames[:-2]) and len(frames[:-2]) == 4  # 3 tokens + the end


def _requests_with_status(server, status: str) -> float:
    text = server.client.metrics()
    match = re.search(rf'^lmjupyter_requests_total\{{model="{MODEL}",status="{status}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_client_that_leaves_cancels_its_sequence_only(llm_server):
    """Three streams share the worker; one reads 3 chunks and hangs up. The others finish untouched."""
    client = client_for(llm_server)
    reference = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0,
                                          extra_body={"ignore_eos": True})
    cancelled_before = _requests_with_status(llm_server, "499")

    def full_stream(_):
        stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True})
        return "".join(c.choices[0].text for c in stream)

    def leave_after_three():
        stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True})
        seen = [chunk for _, chunk in zip(range(3), stream)]
        stream.close()  # closes the connection: the server sees the client go
        return len(seen)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        others = [pool.submit(full_stream, i) for i in range(2)]
        leaver = pool.submit(leave_after_three)
        assert leaver.result(timeout=120) == 3
        assert [f.result(timeout=120) for f in others] == [reference.choices[0].text] * 2
    wait_until(lambda: _requests_with_status(llm_server, "499") == cancelled_before + 1, 30,
               message="the cancelled stream in the metrics")
