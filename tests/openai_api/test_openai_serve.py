"""OpenAI's API on ``lmjupyter serve``, called with the real ``openai`` package.

Greedy answers are checked against the native predict route of the same model,
which is the contract the /v1 routes translate to.
"""
import ast
import concurrent.futures
import re

import httpx
import openai
import pytest
import requests
from openai import OpenAI

from serverproc import wait_until
from v1kit import MODEL, PROMPT, without_chat_template

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


@pytest.fixture(scope="module")
def plain(llm_server):
    """A second tiny model: no chat template, one slot, job tickets (no free slot: 503 at once); big enough
    that its 250 tokens take a good fraction of a second, so that a stream holds the slot for a while."""
    from lmjupyter.models.tiny import build_tiny_llama

    model_dir = build_tiny_llama(llm_server.root + "/plain", num_layers=4, hidden=256, heads=4, kv_heads=2)
    without_chat_template(model_dir)
    llm_server.client.deploy("plain", model_dir=str(model_dir), wait=True, config={
        "deviceType": "cpu", "batchSize": 1, "useJobTicket": True, "handler": {"max_new_tokens": 4}})
    yield "plain"
    llm_server.client.undeploy("plain")


def test_chat_without_a_template_is_refused(llm_server, plain):
    client = client_for(llm_server)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=plain, messages=CHAT, stream=stream)
        assert "chat template" in info.value.body["message"] and info.value.body["param"] == "messages"
    assert client.completions.create(model=plain, prompt="x", max_tokens=2).usage.completion_tokens == 2


def test_overload_is_503_in_openais_shape(llm_server, plain):
    """One slot (plus one request waiting in the worker) and job tickets: a third call is refused at once."""
    client = client_for(llm_server)
    long = dict(model=plain, prompt=PROMPT, max_tokens=400, temperature=0, stream=True,
                extra_body={"ignore_eos": True})
    running = client.completions.create(**long)  # answers at its first token: it holds the slot
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.completions.create, **long)  # waits for the slot inside the worker
        try:
            wait_until(lambda: _metric(llm_server, "lmjupyter_sequences_waiting", plain) == 1, 30,
                       message="the second stream waiting for the slot")
            with pytest.raises(openai.InternalServerError) as info:
                client.completions.create(model=plain, prompt=PROMPT, max_tokens=2)
            assert info.value.status_code == 503 and info.value.body["code"] == "overloaded", info.value.body
            assert "useJobTicket" in info.value.body["message"]
        finally:
            running.close()
            waiting.result(timeout=60).close()


def test_seed_n_and_top_p(llm_server):
    client = client_for(llm_server)
    sampled = dict(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=1.0, extra_body={"ignore_eos": True})
    first = client.completions.create(seed=7, **sampled).choices[0].text
    assert client.completions.create(seed=7, **sampled).choices[0].text == first  # same seed, same text
    texts = {first} | {client.completions.create(seed=s, **sampled).choices[0].text for s in (8, 9, 10)}
    assert len(texts) > 1  # and the seed does matter
    second = client.completions.create(seed=8, **sampled).choices[0].text
    both = client.completions.create(seed=7, n=2, **sampled)  # choice i is seeded seed + i
    assert [(c.index, c.text) for c in both.choices] == [(0, first), (1, second)]
    assert both.usage.completion_tokens == 24
    assert both.usage.prompt_tokens == client.completions.create(seed=7, **sampled).usage.prompt_tokens
    streamed = {0: "", 1: ""}
    for chunk in client.completions.create(seed=7, n=2, stream=True, **sampled):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == {0: first, 1: second}
    greedy = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True}).choices[0].text
    assert client.completions.create(seed=3, top_p=1e-9, **sampled).choices[0].text == greedy  # only the top token
    chat = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=1.0, seed=5)
    again = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=1.0, seed=5)
    assert chat.choices[0].message.content == again.choices[0].message.content


def test_stop_cuts_where_it_should(llm_server):
    client = client_for(llm_server)
    base = dict(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    text = client.completions.create(**base).choices[0].text
    assert len(text) >= 10, text
    stop = text[5:8]
    expected = text[:text.find(stop)]
    cut = client.completions.create(stop=[stop, "never-in-this-text"], **base)
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == (expected, "stop")
    chunks = list(client.completions.create(stop=stop, stream=True, **base))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs(llm_server):
    client = client_for(llm_server)
    chat = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, temperature=0,
                                          logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        tops = entry.top_logprobs
        assert len(tops) == 3 and [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        assert entry.token == tops[0].token and entry.logprob == pytest.approx(tops[0].logprob)  # greedy
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    legacy = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert all(1 <= len(top) <= 2 and max(top.values()) == pytest.approx(p) for top, p in
               zip(lp.top_logprobs, lp.token_logprobs))
    plain_answer = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, temperature=0)
    assert plain_answer.choices[0].logprobs is None


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


def _metric(server, name: str, model: str = MODEL) -> float:
    match = re.search(rf'^{name}\{{model="{model}"\}} (\S+)$', server.client.metrics(), re.M)
    return float(match.group(1)) if match else 0.0


def test_a_client_that_leaves_cancels_its_sequence_only(llm_server):
    """Three streams share the worker; one reads 3 chunks and hangs up. The others finish untouched."""
    client = client_for(llm_server)
    reference = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0,
                                          extra_body={"ignore_eos": True})
    cancelled_before = _requests_with_status(llm_server, "499")
    cancelled_seqs = _metric(llm_server, "lmjupyter_cancelled_requests_total")
    generated_before = _metric(llm_server, "lmjupyter_generated_tokens_total")

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
    assert _metric(llm_server, "lmjupyter_cancelled_requests_total") == cancelled_seqs + 1
    generated = _metric(llm_server, "lmjupyter_generated_tokens_total") - generated_before
    assert 40 * 2 + 3 <= generated < 40 * 3, generated  # the third sequence stopped early: its slot was freed


def test_the_readme_snippet_runs(llm_server):
    """The README's OpenAI client code, as written, against this server."""
    import os
    import subprocess
    import sys

    with open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md"), encoding="utf-8") as f:
        snippet = re.search(r"```python\n(from openai import OpenAI\n.*?)```", f.read(), re.S).group(1)
    code = (snippet.replace("http://127.0.0.1:8765/", llm_server.url).replace('"secret"', repr(llm_server.token))
            .replace('"llama"', repr(MODEL)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed, _, answer = done.stdout.partition("\n")
    assert MODEL in ast.literal_eval(listed) and answer  # the model list, then the streamed answer
