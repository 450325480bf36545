"""The Jupyter extension at parity with ``lmjupyter serve``: OpenAI's API with the Jupyter token,
the fast predict path behind Jupyter's own auth, metrics, and ``%lmserve chat`` in a kernel."""
import re
import shutil
import sys
import time
from pathlib import Path

import openai
import pytest
import requests
from openai import OpenAI

from jupyterproc import TOKEN, execute_notebook, make_notebook, outputs_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "openai_api"))
from v1kit import MODEL, PROMPT  # noqa: E402

pytestmark = pytest.mark.timeout(240)
ECHO = Path(__file__).resolve().parents[1] / "handlers" / "echo.py"
CHAT = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def deployed(jupyter):
    from lmjupyter.models.tiny import build_tiny_llama

    model_dir = build_tiny_llama(jupyter.root / "models" / "tiny", num_layers=2, hidden=32, heads=4, kv_heads=2)
    shutil.copy(ECHO, jupyter.root / "echo.py")
    for body in ({"name": MODEL, "model_dir": str(model_dir),
                  "config": {"deviceType": "cpu", "batchSize": 4, "handler": {"max_new_tokens": 12}}},
                 {"name": "echo", "handler": "echo.py", "config": {"deviceType": "cpu"}}):
        response = jupyter.lmserve("POST", "models", json={**body, "wait": True})
        assert response.status_code == 201, response.text
    return jupyter


def openai_client(jupyter, api_key=TOKEN) -> OpenAI:
    return OpenAI(base_url=jupyter.url + "lmserve/v1", api_key=api_key, max_retries=0, timeout=60)


def test_openai_client_with_the_jupyter_token(deployed):
    client = openai_client(deployed)  # sends Authorization: Bearer <the Jupyter token>
    assert [m.id for m in client.models.list()] == [MODEL]
    native = deployed.lmserve("POST", f"models/{MODEL}/predict", json={"prompt": PROMPT, "max_new_tokens": 6}).json()
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    assert whole.choices[0].text == native["text"] and whole.usage.completion_tokens == 6
    streamed = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == native["text"]
    chat = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage == chat.usage


def test_refused_without_the_token(deployed):
    for key in ("wrong", ""):
        with pytest.raises(openai.PermissionDeniedError) as info:
            openai_client(deployed, api_key=key or "x").chat.completions.create(model=MODEL, messages=CHAT)
        assert set(info.value.body) == {"message", "type", "param", "code"}
    bare = requests.post(deployed.url + "lmserve/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=30)
    assert bare.status_code == 403
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(deployed).chat.completions.create(model="echo", messages=CHAT)
    assert "not a causal LM" in info.value.body["message"]


def _predict(jupyter, path, token=TOKEN, query="", **headers):
    return requests.post(jupyter.url + path + query, data=b'{"x": 1}', timeout=60,
                         headers={"Authorization": f"token {token}", "Content-Type": "application/json", **headers})


def test_fast_predict_path_keeps_jupyters_answers(deployed):
    """Plain predict calls skip the handlers (no Jupyter CSP header on the answer); anything the fast
    path cannot vouch for goes the ordinary way and gets Jupyter's answer."""
    path = "lmserve/api/models/echo/predict"
    fast, ordinary = _predict(deployed, path), _predict(deployed, path, query="?stream=0")
    assert fast.status_code == ordinary.status_code == 200
    assert fast.json()["echo"] == ordinary.json()["echo"] == {"x": 1}
    assert "Content-Security-Policy" not in fast.headers and "Content-Security-Policy" in ordinary.headers
    bearer = requests.post(deployed.url + path, json={"x": 2}, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.json()["echo"] == {"x": 2} and "Content-Security-Policy" not in bearer.headers
    for response in (_predict(deployed, path, token="wrong"), _predict(deployed, path, token="wrong", query="?a=1")):
        assert response.status_code == 403 and "Content-Security-Policy" in response.headers
    browser = _predict(deployed, path, Origin="http://elsewhere.example")  # CORS is Jupyter's to decide
    assert browser.status_code == 200 and "Content-Security-Policy" in browser.headers
    missing = _predict(deployed, "lmserve/api/models/nosuch/predict")
    assert missing.status_code == 404 and "Content-Security-Policy" in missing.headers


def test_fast_calls_count_as_activity_and_in_metrics(deployed):
    def served() -> float:
        text = deployed.request("GET", "lmserve/metrics").text
        match = re.search(r'^lmjupyter_requests_total\{model="echo",status="200"\} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    before_count = served()
    before = deployed.request("GET", "api/status").json()["last_activity"]
    time.sleep(1.1)  # the fast path records activity at most once a second
    for _ in range(3):
        assert _predict(deployed, "lmserve/api/models/echo/predict").status_code == 200
    assert served() == before_count + 3
    assert deployed.request("GET", "api/status").json()["last_activity"] > before


def test_chat_magic_streams_and_continues_the_conversation(deployed):
    client = openai_client(deployed)
    first = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, temperature=0)
    history = CHAT + [{"role": "assistant", "content": first.choices[0].message.content},
                      {"role": "user", "content": "And then"}]
    second = client.chat.completions.create(model=MODEL, messages=history, max_tokens=5, temperature=0)
    nb = execute_notebook(deployed, make_notebook(
        "%load_ext lmjupyter",
        f"%lmserve chat {MODEL} --max-tokens 5 --temperature 0 Hello there",
        f"%lmserve chat {MODEL} --max-tokens 5 --temperature 0 And then",  # (a trailing ? asks IPython for help)
        f"%lmserve chat {MODEL} --new",
        f"%%lmserve chat {MODEL} --max-tokens 5 --temperature 0\nHello there",
        f"%lmserve chat {MODEL} --max-tokens 5 --bogus 1 hi",
    ), "magics/chat.ipynb", timeout=120, allow_errors=True)
    texts = [outputs_text(c) for c in nb.cells]
    printed = ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream") for c in nb.cells]
    cut = "[cut at 5 tokens: --max-tokens N for more]\n"
    assert printed[1] == first.choices[0].message.content + "\n" + cut, texts
    assert printed[2] == second.choices[0].message.content + "\n" + cut, texts  # the conversation went on
    assert f"new chat with {MODEL}" in texts[3]
    assert printed[4] == printed[1], texts  # --new: the same first turn again
    assert "UsageError" in texts[5] and "unknown option --bogus" in texts[5]
