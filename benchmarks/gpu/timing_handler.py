"""The built-in causal-LM handler, plus where each decode step's time goes inside the worker.

``inside``: time spent producing the step (the generate loop, detokenizing the
partial); ``outside``: time between the handler yielding a step's partials and
being asked for the next one, i.e. what the caller does with them (in a worker:
encode each partial and send it to the server). Answers carry
``{"timing": {"steps", "inside_s", "outside_s"}}``.
"""
from __future__ import annotations

import time

from lmjupyter.handlers.causal_lm import CausalLMHandler


class TimedCausalLM(CausalLMHandler):
    def inference(self, batch):
        stream = super().inference(batch)
        inside = outside = 0.0
        steps = 0
        t_back = time.perf_counter()
        while True:
            t_ask = time.perf_counter()
            if steps:
                outside += t_ask - t_back
            try:
                partial = next(stream)
            except StopIteration as stop:
                answers = stop.value
                break
            t_back = time.perf_counter()
            inside += t_back - t_ask
            steps += 1
            yield partial
        for answer in answers:
            answer["timing"] = {"steps": steps, "inside_s": inside, "outside_s": outside}
        return answers
