"""model-config.yaml: TorchServe's keys, typed and validated before anything starts.

A config arrives as YAML text (a model-config.yaml) or as a mapping (a REST body).
:func:`load_config` returns a :class:`ModelConfig` or raises :class:`ConfigError`
naming the key path, the value, what was expected and, for YAML, the line.
Unknown top-level keys are kept out of the config and reported as warnings with
the nearest known key, as TorchServe users often carry keys we do not use.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import math
import os
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A model config that cannot be used; ``key`` is the dotted path of the culprit."""

    def __init__(self, message: str, key: str | None = None, line: int | None = None):
        super().__init__(message)
        self.key = key
        self.line = line

    def to_dict(self) -> dict:
        return {"message": str(self), "key": self.key, "line": self.line}


MAX_TIMEOUT_S = 7 * 24 * 3600  # a week: longer is a typo, and overflows timers (timedelta) further down
MAX_NESTING = 32               # levels of lists and mappings in a config
MAX_VALUES = 100_000           # values in a config, counting every use of a YAML alias
MAX_CONFIG_CHARS = 1 << 20     # model-config.yaml text


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)


class TorchrunConfig(_Section):
    """``torchrun:``; keys we do not interpret pass through as ``--key value``."""

    nproc_per_node: int = Field(1, alias="nproc-per-node", ge=1, le=1024)
    omp_number_threads: int = Field(1, alias="OMP_NUMBER_THREADS", ge=1, le=1024)
    # Hosts per worker group (lmjupyter/nodes/): this server's host plus nnodes-1 `lmjupyter node` agents.
    nnodes: int | None = Field(None, ge=1, le=1024)

    @model_validator(mode="after")
    def _options_torchrun_knows(self):
        """Refused here, not by a torchrun that exits at start: unknown options and non-scalar values."""
        known = torchrun_options()
        for key, value in self.passthrough().items():
            if known and key not in known:
                hint = difflib.get_close_matches(key, sorted(known), n=1)
                nearest = f"; did you mean {hint[0]!r}?" if hint else " (torchrun --help lists them)"
                raise _KeyedError(f"torchrun.{key}", value, f"an option torchrun knows{nearest}")
            if not (value is None or isinstance(value, (str, bool, int)) or
                    (isinstance(value, float) and math.isfinite(value))):
                raise _KeyedError(f"torchrun.{key}", value, "a string, number or true/false")
        return self

    def passthrough(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


@functools.lru_cache(maxsize=1)
def torchrun_options() -> frozenset[str]:
    """The option names the installed torchrun accepts, read from its source (importing torch
    would cost the server seconds and hundreds of MB); empty when it cannot be found."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return frozenset()
    try:
        with open(os.path.join(os.path.dirname(spec.origin), "distributed", "run.py"), encoding="utf-8") as f:
            return frozenset(re.findall(r"[\"']--([A-Za-z][A-Za-z0-9_-]*)[\"']", f.read()))
    except OSError:
        return frozenset()


class PippyConfig(_Section):
    chunks: int = Field(1, ge=1, le=4096)
    input_names: list[str] = ["input_ids"]
    model_type: str = "HF"
    rpc_timeout: int = Field(1800, ge=1, le=MAX_TIMEOUT_S)
    num_worker_threads: int = Field(512, ge=1, le=65536)


class DeepSpeedConfig(_Section):
    config: str | None = None
    checkpoint: str | None = None


class ModelConfig(BaseModel):
    """A validated model-config.yaml. Field names are TorchServe's camelCase keys."""

    model_config = ConfigDict(extra="forbid", strict=True)

    minWorkers: int = Field(1, ge=0, le=256)
    maxWorkers: int | None = Field(None, ge=1, le=256)
    batchSize: int = Field(1, ge=1, le=4096)
    maxBatchDelay: int = Field(100, ge=0, le=600_000)
    responseTimeout: int = Field(120, ge=1, le=MAX_TIMEOUT_S)
    startupTimeout: int = Field(120, ge=1, le=MAX_TIMEOUT_S)
    deviceType: Literal["cpu", "gpu"] | None = None
    deviceIds: list[int] | None = None
    parallelType: Literal["pp", "tp", "pptp"] | None = None
    jobQueueSize: int = Field(100, ge=1, le=1_000_000)
    useJobTicket: bool = False
    continuousBatching: bool | None = None   # built-in causal-LM handler: on unless false
    torchrun: TorchrunConfig = TorchrunConfig()
    pippy: PippyConfig | None = None
    deepspeed: DeepSpeedConfig | None = None
    handler: dict[str, Any] = {}
    # Top-level sections lmjupyter does not know (TorchServe handlers read e.g. pt2: or their own):
    # not validated, not used by the engine, but handed to the handler in ctx.model_yaml_config.
    _other_sections: dict = PrivateAttr(default_factory=dict)

    @field_validator("deviceIds")
    @classmethod
    def _ids_are_distinct(cls, ids):
        if ids is not None:
            if not ids:
                raise ValueError("a non-empty list of GPU ids")
            if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
                raise ValueError("distinct GPU ids >= 0")
        return ids

    @model_validator(mode="after")
    def _consistent(self):
        if self.maxWorkers is None:
            self.maxWorkers = max(self.minWorkers, 1)
        if self.maxWorkers < self.minWorkers:
            raise _KeyedError("maxWorkers", self.maxWorkers, f"a number >= minWorkers ({self.minWorkers})")
        nproc = self.torchrun.nproc_per_node
        if self.deviceIds is not None and len(self.deviceIds) < nproc:
            raise _KeyedError("deviceIds", self.deviceIds,
                              f"at least torchrun.nproc-per-node ({nproc}) GPU ids")
        if self.parallelType == "pptp" and nproc < 2:
            raise _KeyedError("torchrun.nproc-per-node", nproc, "at least 2 ranks for parallelType pptp")
        return self

    @property
    def nproc(self) -> int:
        return self.torchrun.nproc_per_node

    @property
    def nnodes(self) -> int:
        return self.torchrun.nnodes or 1

    def as_yaml_dict(self, other_sections: bool = False) -> dict:
        """The config with YAML key names; ``other_sections``: as the handler sees it
        (``ctx.model_yaml_config``), with the top-level keys lmjupyter does not use."""
        data = self.model_dump(by_alias=True, exclude_none=True)
        return {**self._other_sections, **data} if other_sections else data


class _KeyedError(ValueError):
    def __init__(self, key: str, value: Any, expected: str):
        super().__init__(expected)
        self.key, self.value, self.expected = key, value, expected


KNOWN_KEYS = tuple(ModelConfig.model_fields)
_SECTION_MODELS = {"torchrun": TorchrunConfig, "pippy": PippyConfig, "deepspeed": DeepSpeedConfig}


def load_config(source: str | dict | None, *, filename: str = "model-config.yaml") -> tuple[ModelConfig, list[str]]:
    """Parse and validate; return the config and the warnings (unknown keys)."""
    root_node = None
    if source is None:
        data: Any = {}
    elif isinstance(source, str):
        if len(source) > MAX_CONFIG_CHARS:
            raise ConfigError(f"{filename}: {len(source)} characters; a model config may have at most {MAX_CONFIG_CHARS}")
        try:
            _check_yaml_shape(source, filename)
            root_node = yaml.compose(source, Loader=yaml.SafeLoader)
            data = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark else None
            raise ConfigError(f"{filename}: not valid YAML{_at(line)}: {exc}", line=line) from None
        except RecursionError:  # PyYAML composes recursively
            raise ConfigError(f"{filename}: nested more than {MAX_NESTING} levels deep") from None
    else:
        data = source
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}: expected a mapping of keys to values, got {type(data).__name__}")
    _check_plain_data(data, root_node, filename)

    warnings = []
    known = {}
    for key, value in data.items():
        if key in KNOWN_KEYS:
            known[key] = value
        else:
            hint = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1)
            nearest = f"; did you mean {hint[0]!r}?" if hint else ""
            line = _line_of(root_node, (key,))
            warnings.append(f"{filename}: unknown key {key!r}{_at(line)} is ignored by lmjupyter (the handler "
                            f"still finds it in ctx.model_yaml_config){nearest}")
    try:
        config = ModelConfig.model_validate(_coerce_yaml_numbers(known))
        config._other_sections = {k: v for k, v in data.items() if k not in known}
        return config, warnings
    except ValidationError as exc:
        raise _to_config_error(exc, data, root_node, filename) from None
    except _KeyedError as exc:
        raise _keyed(exc.key, exc.value, exc.expected, root_node, filename) from None


def _check_yaml_shape(source: str, filename: str) -> None:
    """Depth and size (every alias use counted with what it stands for) from the event stream,
    which PyYAML produces without recursion: a deep or exploding document is refused in
    linear time, before the recursive composer sees it."""
    sizes: dict[str, int] = {}       # anchor -> values it stands for
    stack: list[list] = []           # open collections: [values so far, anchor]
    total = 0
    for event in yaml.parse(source, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append([0, event.anchor])
            if len(stack) > MAX_NESTING + 1:
                line = event.start_mark.line + 1
                raise ConfigError(f"{filename}: nested more than {MAX_NESTING} levels deep{_at(line)}", line=line)
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            count, anchor = stack.pop()
            size = count + 1
        elif isinstance(event, yaml.AliasEvent):
            size = sizes.get(event.anchor, 1)
            total += size
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
            total += 1
        else:
            continue
        if isinstance(event, (yaml.CollectionEndEvent, yaml.ScalarEvent)) and anchor:
            sizes[anchor] = size
        if stack:
            stack[-1][0] += size
        if total > MAX_VALUES:
            line = event.start_mark.line + 1
            raise ConfigError(f"{filename}: more than {MAX_VALUES} values{_at(line)} "
                              "(YAML aliases count each use)", line=line)


def _check_plain_data(data: dict, root_node, filename: str) -> None:
    """Only what JSON can carry (the config travels as JSON to ranks, clients and the registry),
    bounded in depth and size: YAML dates, binary and NaN, or an alias bomb, are refused by key."""
    seen = 0
    todo: list[tuple[tuple, Any]] = [((key,), value) for key, value in data.items()]
    while todo:
        loc, value = todo.pop()
        seen += 1
        key = ".".join(str(p) for p in loc)
        if seen > MAX_VALUES:
            raise _keyed(key, "...", f"a config of at most {MAX_VALUES} values (YAML aliases count each use)",
                         root_node, filename, loc=loc)
        if len(loc) > MAX_NESTING:
            raise _keyed(key, "...", f"at most {MAX_NESTING} levels of nesting", root_node, filename, loc=loc)
        if isinstance(value, dict):
            for k, v in value.items():
                if not (k is None or isinstance(k, (str, int, bool))):
                    raise _keyed(key, k, "keys that are strings or numbers", root_node, filename, loc=loc)
                todo.append(((*loc, k), v))
        elif isinstance(value, list):
            todo.extend(((*loc, i), v) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise _keyed(key, value, "a finite number", root_node, filename, loc=loc)
        elif not (value is None or isinstance(value, (str, int, float, bool))):
            raise _keyed(key, value, f"a string, number, true/false, list or mapping (not a YAML "
                                     f"{type(value).__name__})", root_node, filename, loc=loc)


def _coerce_yaml_numbers(data: dict) -> dict:
    """Strict mode refuses '100' for an int, as it should; but YAML floats like 100.0 are fine."""
    out = dict(data)
    for key, value in data.items():
        if isinstance(value, float) and value.is_integer() and ModelConfig.model_fields[key].annotation in (int,):
            out[key] = int(value)
    return out


def _to_config_error(exc: ValidationError, data: dict, root_node, filename: str) -> ConfigError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not isinstance(p, str) or not p.startswith(("literal[", "list[", "int", "str")))
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, _KeyedError):
        return _keyed(ctx_error.key, ctx_error.value, ctx_error.expected, root_node, filename)
    loc = _alias_path(loc)
    value = _value_at(data, loc)
    expected = _expected(err)
    return _keyed(".".join(str(p) for p in loc), value, expected, root_node, filename, loc=loc)


def _keyed(key: str, value: Any, expected: str, root_node, filename: str, loc=None) -> ConfigError:
    loc = loc or tuple(key.split("."))
    line = _line_of(root_node, loc)
    return ConfigError(f"{filename}: {key} = {value!r}{_at(line)}: expected {expected}", key=key, line=line)


def _alias_path(loc: tuple) -> tuple:
    """pydantic reports field names; users wrote aliases (nproc-per-node)."""
    if len(loc) >= 2 and loc[0] in _SECTION_MODELS:
        field = _SECTION_MODELS[loc[0]].model_fields.get(loc[1])
        if field is not None and field.alias:
            return (loc[0], field.alias, *loc[2:])
    return loc


def _expected(err: dict) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "literal_error":
        return f"one of {ctx.get('expected')}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        wanted = kind.split("_")[0].replace("dict", "mapping").replace("model", "mapping")
        return f"{'an' if wanted[0] in 'aeiou' else 'a'} {wanted}"
    if kind == "greater_than_equal":
        return f"a number >= {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"a number <= {ctx.get('le')}"
    if kind == "extra_forbidden":
        return "no such key"
    return err["msg"].removeprefix("Value error, ")


def _value_at(data: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _line_of(node, loc: tuple) -> int | None:
    """1-based line of a key path in composed YAML, for error messages."""
    if node is None:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    line, node = key_node.start_mark.line + 1, value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _at(line: int | None) -> str:
    return f" (line {line})" if line else ""
