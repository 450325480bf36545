"""OpenAI request bodies in, requests of the built-in causal-LM handler out.

Nothing is sampled here: each OpenAI call becomes one native request per choice
(:mod:`lmjupyter.generation.params` is the contract), and the native answers are
put back together in OpenAI's shape by :mod:`lmjupyter.server.openai.shapes`.

- ``max_tokens`` / ``max_completion_tokens`` -> ``max_new_tokens`` (completions default
  to OpenAI's 16; chat to the handler's ``handler.max_new_tokens``);
- ``temperature`` (OpenAI's default 1.0), ``top_p``, ``stop``, ``seed`` as they are;
  ``top_k`` and ``ignore_eos`` are accepted as extensions (as vLLM does);
- ``n`` > 1: n sequences, choice ``i`` seeded ``seed + i`` when a seed is given
  (so a seeded call is reproducible choice by choice), unseeded otherwise;
- a completions ``prompt`` may be a string, a list of token ids, or a list of
  either: choices then run prompt by prompt, ``n`` each (index = prompt * n + i);
- ``logprobs`` (completions: the number of alternatives; chat: ``logprobs: true``
  with ``top_logprobs``) -> ``logprobs: k``; ``user`` and ``metadata`` are ignored.

Parameters that would change the answer and are not implemented (penalties,
``logit_bias``, ``echo``, ``suffix``, tools, JSON mode, ...) are refused with a 400
naming them; they are accepted only at the value that changes nothing. Anything
else unknown is refused as OpenAI does ("Unrecognized request argument").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from lmjupyter.server.openai.errors import OpenAIError, invalid, unsupported

MAX_CHOICES = 128          # prompts x n of one call
MAX_STOP = 16              # the native contract's limit (OpenAI allows 4)
MAX_LOGPROBS = 20
COMPLETION_MAX_TOKENS_DEFAULT = 16   # OpenAI's documented default for /v1/completions

COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed",
          "user", "metadata", "top_k", "ignore_eos", "frequency_penalty", "presence_penalty", "logit_bias",
          "service_tier", "logprobs"}
COMPLETION = COMMON | {"prompt", "echo", "best_of", "suffix"}
CHAT = COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice",
                 "parallel_tool_calls", "functions", "function_call", "store", "modalities", "reasoning_effort",
                 "prediction", "audio", "web_search_options"}

# Accepted only at values that change nothing; any other value is a 400 naming the parameter.
NEUTRAL = {
    "frequency_penalty": (None, 0), "presence_penalty": (None, 0), "logit_bias": (None, {}),
    "echo": (None, False), "suffix": (None, ""), "response_format": (None, {"type": "text"}),
    "tools": (None, []), "tool_choice": (None, "none"), "parallel_tool_calls": (None, True, False),
    "functions": (None, []), "function_call": (None, "none"), "store": (None, False),
    "modalities": (None, ["text"]), "reasoning_effort": (None,), "prediction": (None,), "audio": (None,),
    "web_search_options": (None,), "service_tier": (None, "auto", "default"),
}
ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class Call:
    """One OpenAI call as native requests, one per choice, and how to answer it."""

    kind: str                     # "chat" or "completion"
    model: str                    # as the client named it (echoed in the answer)
    name: str
    version: str | None
    natives: list[dict]
    n: int
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None   # alternatives per token in the answer; None: no logprobs
    rename: dict[str, str] = field(default_factory=dict)  # native field -> the client's parameter

    def prompt_of(self, choice: int) -> int:
        return choice // self.n


def parse_completion(body) -> Call:
    body = _object(body)
    _known(body, COMPLETION)
    prompts = _prompts(body.get("prompt"))
    logprobs = body.get("logprobs")
    if logprobs is not None and (not _is_int(logprobs) or not 0 <= logprobs <= MAX_LOGPROBS):
        raise invalid("logprobs", f"expected an integer in [0, {MAX_LOGPROBS}], got {logprobs!r}")
    n = _n(body, len(prompts))
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise unsupported("best_of", "every choice generated is returned (leave best_of unset or equal to n)")
    options, rename = _options(body, "max_tokens", COMPLETION_MAX_TOKENS_DEFAULT)
    if logprobs is not None:
        options["logprobs"] = logprobs
    rename.update({"prompt": "prompt", "input_ids": "prompt"})
    return _call("completion", body, prompts, options, n, logprobs, rename)


def parse_chat(body) -> Call:
    body = _object(body)
    _known(body, CHAT)
    messages = _messages(body.get("messages"))
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None \
            and body["max_tokens"] != body["max_completion_tokens"]:
        raise invalid("max_completion_tokens", "max_tokens and max_completion_tokens differ; give one")
    limit_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    options, rename = _options(body, limit_key, None)
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise invalid("logprobs", f"expected true or false, got {logprobs!r}")
    if top is not None:
        if not _is_int(top) or not 0 <= top <= MAX_LOGPROBS:
            raise invalid("top_logprobs", f"expected an integer in [0, {MAX_LOGPROBS}], got {top!r}")
        if not logprobs:
            raise invalid("top_logprobs", "needs logprobs: true")
    wanted = (top or 0) if logprobs else None
    if wanted is not None:
        options["logprobs"] = wanted
    rename.update({"messages": "messages", "prompt": "messages", "logprobs": "top_logprobs" if top else "logprobs"})
    return _call("chat", body, [{"messages": messages}], options, _n(body, 1), wanted, rename)


# ---- pieces --------------------------------------------------------------------------------
def _call(kind: str, body: dict, prompts: list[dict], options: dict, n: int, logprobs, rename) -> Call:
    name, version = split_model(body.get("model"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream", f"expected true or false, got {stream!r}")
    include_usage = _stream_options(body.get("stream_options"), bool(stream))
    seed = options.pop("seed", None)
    natives = []
    for prompt in prompts:
        for i in range(n):
            native = {**prompt, **options}
            if seed is not None:
                native["seed"] = seed + i
            natives.append(native)
    return Call(kind, body["model"], name, version, natives, n, bool(stream), include_usage, logprobs, rename)


def split_model(model) -> tuple[str, str | None]:
    """``name`` (the default version) or ``name:version``."""
    if not isinstance(model, str) or not model:
        raise invalid("model", "expected the name of a deployed model (name or name:version)")
    name, sep, version = model.partition(":")
    return name, (version if sep else None)


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    return body


def _known(body: dict, allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise OpenAIError(400, f"Unrecognized request argument supplied: {key}", param=key,
                              code="unknown_parameter")
    for key, values in NEUTRAL.items():
        if key in body and not any(_same(body[key], v) for v in values):
            raise unsupported(key, f"only {' or '.join(repr(v) for v in values if v is not None)} is accepted"
                              if any(v is not None for v in values) else "leave it unset")


def _same(given, neutral) -> bool:
    """Equal and of the same kind (``0`` is a neutral penalty, ``False`` is not)."""
    if isinstance(neutral, (int, float)) and not isinstance(neutral, bool):
        return isinstance(given, (int, float)) and not isinstance(given, bool) and given == neutral
    return type(given) is type(neutral) and given == neutral


def _options(body: dict, limit_key: str, default_limit: int | None) -> tuple[dict, dict]:
    """The sampling fields of the native request, only those that differ from its defaults."""
    options: dict = {}
    limit = body.get(limit_key)
    if limit is None:
        limit = default_limit
    if limit is not None:
        if not _is_int(limit) or limit < 0:
            raise invalid(limit_key, f"expected an integer >= 0, got {limit!r}")
        options["max_new_tokens"] = limit
    options["temperature"] = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0.0:
        raise invalid("top_p", f"expected a number in (0, 1], got {top_p}")
    if top_p < 1.0:
        options["top_p"] = top_p
    top_k = body.get("top_k")
    if top_k is not None and top_k not in (0, -1):  # vLLM's -1 and 0 both mean off
        if not _is_int(top_k) or top_k < 0:
            raise invalid("top_k", f"expected an integer >= 0 (0 or -1: off), got {top_k!r}")
        options["top_k"] = top_k
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed):
            raise invalid("seed", f"expected an integer, got {seed!r}")
        options["seed"] = seed
    stop = _stop(body.get("stop"))
    if stop:
        options["stop"] = stop
    ignore_eos = body.get("ignore_eos")
    if ignore_eos is not None:
        if not isinstance(ignore_eos, bool):
            raise invalid("ignore_eos", f"expected true or false, got {ignore_eos!r}")
        if ignore_eos:
            options["ignore_eos"] = True
    rename = {"max_new_tokens": limit_key}
    return options, rename


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise invalid(key, f"expected a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _stop(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_STOP or not all(isinstance(s, str) for s in value):
        raise invalid("stop", f"expected a string or a list of at most {MAX_STOP} strings")
    if any(s == "" for s in value):
        raise invalid("stop", "a stop string must not be empty")
    return value


def _n(body: dict, prompts: int) -> int:
    n = body.get("n")
    if n is None:
        n = 1
    if not _is_int(n) or n < 1:
        raise invalid("n", f"expected an integer >= 1, got {n!r}")
    if n * prompts > MAX_CHOICES:
        raise invalid("n", f"{n} choices x {prompts} prompt(s) is more than {MAX_CHOICES} sequences in one call")
    return n


def _stream_options(value, stream: bool) -> bool:
    if value is None:
        return False
    if not stream:
        raise invalid("stream_options", "only allowed when stream is true")
    if not isinstance(value, dict) or any(k not in ("include_usage", "include_obfuscation") for k in value):
        raise invalid("stream_options", 'expected {"include_usage": true|false}')
    include = value.get("include_usage", False)
    if not isinstance(include, bool):
        raise invalid("stream_options", f"include_usage: expected true or false, got {include!r}")
    return include


def _prompts(prompt) -> list[dict]:
    """A completions prompt as native prompt fields: a string, token ids, or a list of either."""
    if isinstance(prompt, str):
        return [{"prompt": prompt}]
    if isinstance(prompt, list) and prompt:
        if all(_is_int(t) for t in prompt):
            return [{"input_ids": prompt}]
        if all(isinstance(p, str) for p in prompt):
            return [{"prompt": p} for p in prompt]
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return [{"input_ids": p} for p in prompt]
    raise invalid("prompt", "expected a string, a list of strings, a list of token ids, or a list of such lists "
                            "(none empty)")


def _messages(messages) -> list[dict]:
    """OpenAI messages as the native ``[{"role", "content": str}]`` the chat template takes."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", 'expected a non-empty list of {"role": ..., "content": ...}')
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise OpenAIError(400, f"{where}: expected an object with a role in {', '.join(ROLES)}", param=where,
                              code="invalid_value")
        for key in message:
            if key not in ("role", "content", "name"):
                raise unsupported(f"{where}.{key}")
        out.append({"role": message["role"], "content": _content(message.get("content"), where)})
    return out


def _content(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = []
        for j, part in enumerate(content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise unsupported(f"{where}.content[{j}]", "only text parts ({\"type\": \"text\", \"text\": ...})")
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(f"{where}.content", "expected a string or a list of text parts")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
