"""Part 2 of issue 13: model-config.yaml fuzzed with hypothesis, every value type at every key.

A config is either taken (and then all of it is plain JSON, as ranks, clients and the registry
need) or refused with a ConfigError naming the key; through a real server, the refusal is a 400
naming the key and no process is started."""
import json
import os

import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmjupyter.config import ConfigError, KNOWN_KEYS, load_config, torchrun_options
from procwatch import workers_below
from serverproc import ServerProcess

SECTIONS = {"torchrun": ["nproc-per-node", "OMP_NUMBER_THREADS", "nnodes", "max-restarts", "rdzv-endpoint",
                         "not-an-option"],
            "pippy": ["chunks", "input_names", "model_type", "rpc_timeout", "num_worker_threads"],
            "deepspeed": ["config", "checkpoint"],
            "handler": ["max_new_tokens", "anything"]}
KEYS = [(key,) for key in KNOWN_KEYS] + [(section, sub) for section, subs in SECTIONS.items() for sub in subs]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["cpu", "gpu", "pp", "tp", "pptp", "1", "0", "-1", "", "\u00e9\u4e2d\U0001f600"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=10)
# YAML that no JSON value writes: dates, binary, sets, NaN, anchors and aliases, deep nesting
yaml_only = st.sampled_from(["2024-01-01", "2024-01-01T10:00:00Z", "!!binary aGVsbG8=", "!!set {a, b}", ".nan",
                             "-.inf", "&a [*a]", "[" * 40 + "]" * 40, "{a: " * 40 + "1" + "}" * 40,
                             "!!python/object:os.system ls", "~", "0x1F", "0o17", "1_000", "+12", "yes", "no"])
FUZZ = settings(max_examples=int(os.environ.get("LMJ_CONFIG_EXAMPLES", "400")), deadline=None, derandomize=True,
                database=None, suppress_health_check=list(HealthCheck))


def nest(path: tuple, value):
    return {path[0]: value} if len(path) == 1 else {path[0]: {path[1]: value}}


def check(config, path: tuple, filename="model-config.yaml"):
    """Taken: plain JSON and usable by the engine; refused: a ConfigError naming this key."""
    try:
        model, warnings = load_config(config, filename=filename)
    except ConfigError as exc:
        assert exc.key is not None or len(path) == 1 or path[0] == "handler" or "YAML" in str(exc) \
            or "nested" in str(exc) or "values" in str(exc), str(exc)
        if exc.key is not None:
            named = exc.key.split(".")
            assert named[: len(path)] == [str(p) for p in path][: len(named)], (exc.key, path, str(exc))
        assert str(exc).startswith(filename)
        return None
    json.dumps(model.as_yaml_dict(), allow_nan=False)  # no date, bytes, NaN: ranks and clients get JSON
    for key, value in model.torchrun.passthrough().items():
        assert key in torchrun_options() and not isinstance(value, (list, dict))
    return model


@given(path=st.sampled_from(KEYS), value=values)
@FUZZ
def test_every_value_at_every_key_is_taken_or_refused_by_name(path, value):
    check(nest(path, value), path)                                   # a REST body's mapping
    try:
        text = yaml.safe_dump(nest(path, value), allow_unicode=True)
    except yaml.YAMLError:
        return
    check(text, path)                                                # the same as model-config.yaml


@given(path=st.sampled_from(KEYS), raw=yaml_only)
@FUZZ
def test_yaml_that_json_cannot_carry_is_refused_by_name(path, raw):
    prefix = "" if len(path) == 1 else f"{path[0]}:\n  "
    text = f"{prefix}{path[-1]}: {raw}\n"
    model = check(text, path)
    if model is not None:
        assert raw in ("~", "0x1F", "0o17", "1_000", "+12", "yes", "no") or path[0] == "handler" and \
            raw.startswith(("{a:", "[")), (text, model)


def test_alias_bombs_and_deep_documents_are_refused_quickly():
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")) + "handler: {h: *i}\n"
    for text, words in ((bomb, "values"), ("handler:\n  x: " + "[" * 5000 + "]" * 5000 + "\n", "nested")):
        with pytest.raises(ConfigError, match=words):
            load_config(text)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(str(tmp_path_factory.mktemp("config-fuzz")))
    yield proc
    proc.stop()


@pytest.mark.timeout(300)
@given(path=st.sampled_from(KEYS), value=values)
@settings(FUZZ, max_examples=int(os.environ.get("LMJ_CONFIG_REST_EXAMPLES", "40")))
def test_through_the_server_a_bad_config_is_a_400_naming_the_key_and_starts_nothing(server, path, value):
    """Real deploys (not dry runs) with ``workers: 0``: a config that validates starts no worker
    either, so any process below the server would be one a refused config started."""
    body = {"name": "fuzzed", "handler": "lmjupyter.handlers.base:BaseHandler", "config": nest(path, value),
            "workers": 0, "wait": True}
    response = requests.post(server.url + "lmserve/api/models", data=json.dumps(body), timeout=60,  # NaN too
                             headers={"Authorization": f"token {server.token}", "Content-Type": "application/json"})
    assert response.status_code in (201, 400), response.text
    if response.status_code == 400:
        error = response.json()["error"]
        assert error.get("key") and error["key"].split(".")[0] == path[0], (path, error)
        assert server.client.list() == []
    else:
        server.client.undeploy("fuzzed")
    assert workers_below(server.proc.pid) == set(), "a process was started"
