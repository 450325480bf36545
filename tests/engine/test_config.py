"""model-config.yaml: TorchServe's files load unchanged; bad values are refused by key and line."""
import glob
import os

import pytest

from lmjupyter.config import ConfigError, load_config

EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "data", "examples", "*.yaml")))


def test_examples_are_there():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_torchserve_examples_load_unchanged(path):
    with open(path) as f:
        config, warnings = load_config(f.read(), filename=os.path.basename(path))
    assert warnings == []
    assert config.nproc >= 1


def test_example_values_are_read():
    pippy = open(next(p for p in EXAMPLES if "pippy" in p)).read()
    config, _ = load_config(pippy)
    assert (config.parallelType, config.nproc, config.pippy.chunks, config.handler) == ("pp", 4, 1, {"max_length": 80})
    threads, _ = load_config(open(next(p for p in EXAMPLES if "threads" in p)).read())
    assert threads.torchrun.omp_number_threads == 2
    ds, _ = load_config(open(next(p for p in EXAMPLES if "deepspeed" in p)).read())
    assert ds.deepspeed.config == "ds-config.json"


@pytest.mark.parametrize("text,key,line", [
    ("minWorkers: 1\nbatchSize: many\n", "batchSize", 2),
    ("deviceType: tpu\n", "deviceType", 1),
    ("torchrun:\n    nproc-per-node: 0\n", "torchrun.nproc-per-node", 2),
    ("minWorkers: 3\nmaxWorkers: 2\n", "maxWorkers", 2),
    ("deviceIds: [0]\ntorchrun:\n  nproc-per-node: 2\n", "deviceIds", 1),
    ("parallelType: dp\n", "parallelType", 1),
    ("useJobTicket: 'yes'\n", "useJobTicket", 1),
    ("pippy:\n  chunks: -1\n", "pippy.chunks", 2),
])
def test_bad_values_name_key_value_and_line(text, key, line):
    with pytest.raises(ConfigError) as info:
        load_config(text)
    assert info.value.key == key
    assert info.value.line == line
    assert key in str(info.value) and f"line {line}" in str(info.value) and "expected" in str(info.value)


def test_unknown_key_warns_with_nearest():
    config, warnings = load_config("responseTimout: 5\n")
    assert config.responseTimeout == 120
    assert len(warnings) == 1 and "responseTimeout" in warnings[0] and "line 1" in warnings[0]


def test_invalid_yaml_names_line():
    with pytest.raises(ConfigError) as info:
        load_config("minWorkers: 1\nhandler: {a: [\n")
    assert "not valid YAML" in str(info.value) and info.value.line is not None
