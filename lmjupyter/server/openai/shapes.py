"""Native answers of the causal-LM handler in OpenAI's shapes: whole answers and stream chunks.

A native answer is ``{"text", "token_ids", "finish_reason", "prompt_tokens",
"completion_tokens", "logprobs"?}``; a native partial is ``{"token_id", "text",
"logprob"?}``. A chat stream opens each choice with ``{"role": "assistant"}``, sends
one chunk per token, closes the choice with an empty delta and its ``finish_reason``;
with ``stream_options.include_usage`` every chunk carries ``"usage": null`` and a last
chunk with no choices carries the usage, as OpenAI sends them.
"""
from __future__ import annotations

import json
import re
import time
import uuid

from lmjupyter.server.openai.tokens import token_strings
from lmjupyter.server.openai.translate import Call

DONE = b"data: [DONE]\n\n"
# A native partial with nothing but its token and text (no logprob): its text is spliced into the chunk as
# the JSON string it already is. Any other shape is decoded and encoded again.
PLAIN_PARTIAL = re.compile(rb'\{"token_id": \d+, "text": ("(?:[^"\\]|\\.)*")\}')


def sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class Shaper:
    """Builds the answer (or the chunks) of one call; ``model_dir`` names tokens for logprobs."""

    def __init__(self, call: Call, model_dir: str):
        self.call, self.model_dir = call, model_dir
        self.chat = call.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.offsets = [0] * len(call.natives)   # text offsets, for completions logprobs in a stream
        self._token_frames: dict[int, tuple[bytes, bytes]] = {}

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.call.model}

    # ---- whole answers ----------------------------------------------------------------------
    def answer(self, answers: list[dict]) -> dict:
        choices = []
        for index, a in enumerate(answers):
            logprobs = self._logprobs(a.get("logprobs") or [], 0, index) if self.call.logprobs is not None else None
            if self.chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": a["text"]},
                                "logprobs": logprobs, "finish_reason": a["finish_reason"]})
            else:
                choices.append({"index": index, "text": a["text"], "logprobs": logprobs,
                                "finish_reason": a["finish_reason"]})
        out = self._head("chat.completion" if self.chat else "text_completion")
        out["choices"] = choices
        out["usage"] = self.usage(answers)
        return out

    def usage(self, answers: list[dict]) -> dict:
        """Prompt tokens once per prompt (not once per choice), as OpenAI counts them."""
        prompt = sum(a["prompt_tokens"] for i, a in enumerate(answers) if i % self.call.n == 0)
        completion = sum(a["completion_tokens"] for a in answers)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # ---- stream chunks ------------------------------------------------------------------------
    def _chunk(self, choice: dict | None) -> bytes:
        out = self._head("chat.completion.chunk" if self.chat else "text_completion")
        out["choices"] = [choice] if choice is not None else []
        if self.call.include_usage:
            out["usage"] = None
        return sse(out)

    def opening(self, index: int) -> bytes:
        """A chat choice starts with the assistant's role (completions have no such chunk)."""
        return self._chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None}) if self.chat else b""

    def token_bytes(self, index: int, body: bytes) -> bytes:
        """A chunk for a native partial as it came from the worker (the hot path: one per token)."""
        if self.call.logprobs is None:
            match = PLAIN_PARTIAL.fullmatch(body)
            if match is not None:
                head, tail = self._token_frames.get(index) or self._token_frame(index)
                return head + match.group(1) + tail
        partial = json.loads(body)
        return self.token(index, partial) if isinstance(partial, dict) else b""

    def token(self, index: int, partial: dict) -> bytes:
        if self.call.logprobs is None:
            head, tail = self._token_frames.get(index) or self._token_frame(index)
            return head + json.dumps(partial.get("text", "")).encode() + tail
        logprobs = None
        if partial.get("logprob") is not None:
            logprobs = self._logprobs([partial["logprob"]], self.offsets[index], index)
        self.offsets[index] += len(partial.get("text", ""))
        if self.chat:
            return self._chunk({"index": index, "delta": {"content": partial.get("text", "")}, "logprobs": logprobs,
                                "finish_reason": None})
        return self._chunk({"index": index, "text": partial.get("text", ""), "logprobs": logprobs,
                            "finish_reason": None})

    def _token_frame(self, index: int) -> tuple[bytes, bytes]:
        """The bytes around a token's text in its chunk (what ``_chunk`` would write, built once)."""
        marker = "\u0000text\u0000"
        if self.chat:
            choice = {"index": index, "delta": {"content": marker}, "logprobs": None, "finish_reason": None}
        else:
            choice = {"index": index, "text": marker, "logprobs": None, "finish_reason": None}
        head, tail = self._chunk(choice).split(json.dumps(marker).encode())
        self._token_frames[index] = (head, tail)
        return head, tail

    def closing(self, index: int, answer: dict) -> bytes:
        if self.chat:
            return self._chunk({"index": index, "delta": {}, "logprobs": None,
                                "finish_reason": answer["finish_reason"]})
        return self._chunk({"index": index, "text": "", "logprobs": None, "finish_reason": answer["finish_reason"]})

    def usage_chunk(self, answers: list[dict]) -> bytes:
        out = self._head("chat.completion.chunk" if self.chat else "text_completion")
        out["choices"] = []
        out["usage"] = self.usage(answers)
        return sse(out)

    # ---- logprobs -------------------------------------------------------------------------------
    def _logprobs(self, entries: list[dict], offset: int, index: int) -> dict:
        """Native ``[{"token_id", "logprob", "top": [[id, logprob], ...]}]`` in the call's shape."""
        ids = [e["token_id"] for e in entries] + [t[0] for e in entries for t in e.get("top") or []]
        names = dict(zip(ids, token_strings(self.model_dir, ids))) if ids else {}
        if self.chat:
            return {"content": [_chat_entry(names, e) for e in entries], "refusal": None}
        tokens = [names[e["token_id"]] for e in entries]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [_top_dict(names, e) for e in entries], "text_offset": offsets}


def _top_dict(names: dict, entry: dict) -> dict:
    """The legacy ``{token: logprob}``; tokens that read alike (partial UTF-8) keep the likeliest."""
    top: dict = {}
    for token_id, logprob in entry.get("top") or [[entry["token_id"], entry["logprob"]]]:
        top.setdefault(names[token_id], logprob)
    return top


def _chat_entry(names: dict, entry: dict) -> dict:
    def one(token_id: int, logprob: float) -> dict:
        text = names[token_id]
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    out = one(entry["token_id"], entry["logprob"])
    out["top_logprobs"] = [one(i, lp) for i, lp in entry.get("top") or []]
    return out
