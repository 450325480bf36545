"""``%lmserve chat NAME MESSAGE``: a chat with a deployed causal LM, streamed as it is written.

The conversation is kept per model name in the kernel, so each call continues it;
``--new`` starts over. Options come before the message (which is taken as written,
apostrophes and all)::

    %lmserve chat llama Tell me a story
    %lmserve chat llama --max-tokens 64 --temperature 0.7 And then?
    %%lmserve chat llama --new
    A message over
    several lines
"""
from __future__ import annotations

OPTIONS = {"--max-tokens": ("max_tokens", int), "--temperature": ("temperature", float),
           "--top-p": ("top_p", float), "--seed": ("seed", int)}
USAGE = "%lmserve chat NAME [--new] [--max-tokens N] [--temperature T] [--top-p P] [--seed S] MESSAGE"


class Conversations:
    def __init__(self):
        self.history: dict[str, list[dict]] = {}

    def chat(self, client, rest: str, cell: str | None) -> None:
        name, params, new, message = parse(rest)
        if cell is not None:
            if message:
                raise ValueError("%%lmserve chat: the message is the cell body; only options may follow the name")
            message = cell.strip()
        if new:
            self.history.pop(name, None)
        if not message:
            if new:
                print(f"new chat with {name}")
                return
            raise ValueError(f"give a message: {USAGE}")
        turns = self.history.get(name, []) + [{"role": "user", "content": message}]
        pieces = client.chat_stream(name, turns, **params)
        while True:
            try:
                print(next(pieces), end="", flush=True)
            except StopIteration as stop:
                answer = stop.value
                break
        print(flush=True)
        if answer["finish_reason"] == "length":
            print(f"[cut at {answer['usage']['completion_tokens']} tokens: --max-tokens N for more]", flush=True)
        self.history[name] = turns + [{"role": "assistant", "content": answer["content"]}]


def parse(rest: str) -> tuple[str, dict, bool, str]:
    """NAME, the OpenAI parameters, whether --new was given, and the message."""
    words = rest.split(None, 1)
    if not words:
        raise ValueError(f"give the model name: {USAGE}")
    name, text = words[0], (words[1] if len(words) > 1 else "")
    params, new = {}, False
    while text.startswith("--"):
        option, _, text = text.partition(" ")
        text = text.lstrip()
        if option == "--new":
            new = True
            continue
        if option not in OPTIONS:
            raise ValueError(f"unknown option {option}: {USAGE}")
        value, _, text = text.partition(" ")
        text = text.lstrip()
        key, kind = OPTIONS[option]
        try:
            params[key] = kind(value)
        except ValueError:
            raise ValueError(f"{option} {value!r}: expected {'an integer' if kind is int else 'a number'}") from None
    return name, params, new, text.strip()
