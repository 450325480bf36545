"""Part 1 of issue 13: schemathesis against docs/openapi.yaml on a real ``lmjupyter serve`` and on
the Jupyter extension: every documented route and method, valid and invalid inputs. No 5xx, and
every answer has a documented status and the documented shape. Bounded: MAX_EXAMPLES per route."""
import collections
import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings

from fuzzkit import ECHO, ECHO_CONFIG, ECHO_HANDLER, base_for, fuzz_call, load_schema, operations, strategy
from jupyterproc import JupyterServer
from serverproc import ServerProcess

MAX_EXAMPLES = int(os.environ.get("LMJ_FUZZ_EXAMPLES", "25"))
FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))
CALLS: dict[str, list] = {"serve": [], "jupyter": []}


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    server = ServerProcess(str(tmp_path_factory.mktemp("fuzz-serve")))
    server.client.deploy(ECHO, ECHO_HANDLER, config=ECHO_CONFIG, wait=True)
    yield server
    alive = server.proc.poll() is None
    server.stop()
    assert alive, "the server died during fuzzing:\n" + server.log()[-3000:]


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    server = JupyterServer(tmp_path_factory.mktemp("fuzz-jupyter"), base_url="/jh/")
    response = server.lmserve("POST", "models", json={"name": ECHO, "handler": ECHO_HANDLER,
                                                      "config": ECHO_CONFIG, "wait": True})
    assert response.status_code == 201, response.text
    yield server
    alive = server.proc.poll() is None
    server.stop()
    assert alive, "the Jupyter server died during fuzzing:\n" + server.log()[-3000:]


def _fuzz(server_url: str, token: str, label: str, server: str) -> None:
    schema = load_schema(server_url, token, MAX_EXAMPLES)

    @given(case=strategy(schema, label))
    @FUZZ_SETTINGS
    def run(case):
        fuzz_call(case, CALLS[server], base_for(case, server_url, server))

    run()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("label", operations("serve"))
def test_lmjupyter_serve_answers_as_documented(standalone, label):
    _fuzz(standalone.url, standalone.token, label, "serve")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("label", operations("jupyter"))
def test_the_jupyter_extension_answers_as_documented(jupyter, label):
    _fuzz(jupyter.url, jupyter.token, label, "jupyter")


@pytest.mark.parametrize("which", ["serve", "jupyter"])
def test_the_fuzzing_reached_the_model_and_left_it_serving(which, request):
    """The fuzz reached past 404s (the echo model answered) and the model still answers."""
    server = request.getfixturevalue("standalone" if which == "serve" else "jupyter")
    calls = CALLS[which]
    if not calls:
        pytest.skip("the fuzz tests of this server did not run in this session")
    print(f"\n{which}: {len(calls)} fuzzed calls, statuses {dict(collections.Counter(s for _, _, s in calls))}")
    assert any(path.endswith("/predict") and status == 200 for _, path, status in calls)
    assert all(status < 500 for _, _, status in calls)
    if which == "serve":
        assert server.client.predict(ECHO, {"still": "here"}) == {"still": "here"}
    else:
        answer = server.lmserve("POST", f"models/{ECHO}/predict", data=json.dumps({"still": "here"}))
        assert answer.status_code == 200 and answer.json() == {"still": "here"}
