"""What a client may ask of the built-in causal-LM handler, checked before it takes a slot.

A request is a JSON object (or a bare string, meaning ``{"prompt": ...}``)::

    {"prompt": "Once upon a time",      # or "input_ids": [...], or "messages": [{"role", "content"}, ...]
     "max_new_tokens": 64, "temperature": 0.7, "top_p": 0.9, "top_k": 50, "seed": 1,
     "stop": ["\\n\\n"], "logprobs": 2, "ignore_eos": false}

Every field but the prompt is optional. A bad field is refused with
:class:`~lmjupyter.handlers.RequestError` naming it (400), so a typo never turns
silently into a default. The answer is ``{"text", "token_ids", "finish_reason"
("stop" or "length"), "prompt_tokens", "completion_tokens"}`` plus ``"logprobs"``
when asked; a stream sends ``{"token_id", "text"}`` per step first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from lmjupyter.handlers.base import RequestError

PROMPT_KEYS = ("prompt", "input_ids", "messages")
OPTION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "logprobs", "ignore_eos")
MAX_STOP_STRINGS = 16
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0     # 0: greedy
    top_p: float = 1.0
    top_k: int = 0               # 0: no top-k cut
    seed: int | None = None      # same seed, same prompt: same tokens, whatever else is in the batch
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: also the k most likely
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class ParsedRequest:
    prompt_ids: list[int]
    params: SamplingParams


def parse_request(item, tokenizer, *, default_max_new_tokens: int, max_length: int | None = None) -> ParsedRequest:
    """Turn one decoded request body into prompt ids and sampling parameters, or raise RequestError."""
    if isinstance(item, (bytes, bytearray)):
        try:
            item = item.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("the request body is neither JSON nor UTF-8 text") from None
    if isinstance(item, str):
        item = {"prompt": item}
    if not isinstance(item, dict):
        raise RequestError(f"a request must be a string or a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - set(PROMPT_KEYS) - set(OPTION_KEYS))
    if unknown:
        raise RequestError(f"unknown request field(s) {unknown}; expected a prompt ({', '.join(PROMPT_KEYS)}) "
                           f"and some of {list(OPTION_KEYS)}", param=unknown[0])
    ids = _prompt_ids(item, tokenizer)
    if max_length:
        ids = ids[-int(max_length):]
    return ParsedRequest(ids, _params(item, default_max_new_tokens))


def _prompt_ids(item: dict, tokenizer) -> list[int]:
    given = [key for key in PROMPT_KEYS if item.get(key) is not None]
    if len(given) != 1:
        raise RequestError('a request needs exactly one of "prompt" (a string), "input_ids" (a list of ints) '
                           'or "messages" (a chat)', param=given[1] if given else "prompt")
    key = given[0]
    value = item[key]
    if key == "prompt":
        if not isinstance(value, str):
            raise RequestError(f"prompt: expected a string, got {type(value).__name__}", param="prompt")
        ids = tokenizer(value, add_special_tokens=True)["input_ids"]
    elif key == "input_ids":
        vocab = len(tokenizer)
        if not isinstance(value, list) or not all(_is_int(t) and 0 <= t < vocab for t in value):
            raise RequestError(f"input_ids: expected a list of token ids in [0, {vocab})", param="input_ids")
        ids = list(value)
    else:
        ids = chat_prompt_ids(value, tokenizer)
    if not ids:
        raise RequestError(f"{key} is empty: nothing to continue", param=key)
    return [int(t) for t in ids]


def chat_prompt_ids(messages, tokenizer) -> list[int]:
    """The tokenizer's own chat template, with the assistant's turn opened."""
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise RequestError('messages: expected a non-empty list of {"role": str, "content": str}', param="messages")
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError("this model's tokenizer has no chat template (tokenizer_config.json "
                           "chat_template); send a prompt instead of messages", param="messages")
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception as exc:  # a template may raise on roles it does not know
        raise RequestError(f"messages: the chat template refused them: {exc}", param="messages") from None
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def _params(item: dict, default_max_new_tokens: int) -> SamplingParams:
    max_new = item.get("max_new_tokens", default_max_new_tokens)
    if max_new is None:
        max_new = default_max_new_tokens
    if not _is_int(max_new) or max_new < 0:
        raise RequestError(f"max_new_tokens = {max_new!r}: expected an integer >= 0", param="max_new_tokens")
    temperature = _number(item, "temperature", 0.0, low=0.0, high=100.0)
    top_p = _number(item, "top_p", 1.0, low=0.0, high=1.0)
    if top_p <= 0.0:
        raise RequestError(f"top_p = {top_p}: expected a number in (0, 1]", param="top_p")
    top_k = item.get("top_k", 0)
    if top_k is None:
        top_k = 0
    if not _is_int(top_k) or top_k < 0:
        raise RequestError(f"top_k = {top_k!r}: expected an integer >= 0 (0: off)", param="top_k")
    seed = item.get("seed")
    if seed is not None and not _is_int(seed):
        raise RequestError(f"seed = {seed!r}: expected an integer", param="seed")
    logprobs = item.get("logprobs")
    if logprobs is not None and (not _is_int(logprobs) or not 0 <= logprobs <= MAX_LOGPROBS):
        raise RequestError(f"logprobs = {logprobs!r}: expected an integer in [0, {MAX_LOGPROBS}]", param="logprobs")
    ignore_eos = item.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise RequestError(f"ignore_eos = {ignore_eos!r}: expected true or false", param="ignore_eos")
    return SamplingParams(int(max_new), temperature, top_p, int(top_k), None if seed is None else int(seed),
                          _stops(item.get("stop")), logprobs, ignore_eos)


def _stops(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or len(value) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in value)):
        raise RequestError(f"stop: expected a non-empty string or a list of at most {MAX_STOP_STRINGS} "
                           "non-empty strings", param="stop")
    return tuple(value)


def _number(item: dict, key: str, default: float, *, low: float, high: float) -> float:
    value = item.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise RequestError(f"{key} = {value!r}: expected a number in [{low:g}, {high:g}]", param=key)
    return float(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
