"""The token loop every rank runs in lockstep, whatever splits the model.

A runner turns (ids, attention mask, positions) into last-position logits, on
the decider rank at least, keeping its own KV cache between calls. The
decider picks the next tokens and broadcasts them, so every rank feeds the
same tokens to the next step and agrees on when the batch is done.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmjupyter.handlers.parallel.dist import broadcast_
from lmjupyter.handlers.parallel.families import cache_kwarg


@dataclass
class Request:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0


class ModelRunner:
    """A whole causal LM in this process (single, tp, DeepSpeed): logits on every rank."""

    decider_rank = 0

    def __init__(self, model, device):
        self.model, self.device = model, torch.device(device)
        self._cache_kw = cache_kwarg(model)
        self.cache = None

    def start(self, batch_size: int) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)  # knows sliding-window layers

    @torch.no_grad()
    def forward(self, input_ids, attention_mask, position_ids):
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=True, logits_to_keep=1, **{self._cache_kw: self.cache},
        )
        return out.logits[:, -1, :]

    def finish(self) -> None:
        self.cache = None


def left_pad(prompts: list[list[int]], pad_id: int):
    """Ids and mask padded on the left; positions count real tokens only (as HF generate does)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def _pick(logits: torch.Tensor, temperatures: torch.Tensor, generator=None, sampling: bool | None = None) -> torch.Tensor:
    """Greedy where temperature is 0, else a sample from softmax(logits / T).

    ``sampling`` (whether any temperature is above 0) saves a device sync per
    step when the caller knows it already.
    """
    logits = logits.float()
    greedy = logits.argmax(-1)
    if sampling is None:
        sampling = bool((temperatures > 0).any())
    if not sampling:
        return greedy
    scaled = logits / temperatures.clamp(min=1e-6)[:, None]
    sampled = torch.multinomial(torch.softmax(scaled, -1), 1, generator=generator)[:, 0]
    return torch.where(temperatures > 0, sampled, greedy)


def generate(runner, requests: list[Request], pad_id: int, eos_ids: set[int], rank: int, device):
    """Yield, per step, one new token id per request (None once it is finished)
    and whether each request is finished; return the generated ids per request.

    Rows that finished keep being fed (their tokens are ignored) so that the
    batch keeps one shape and every rank stays in the same step.
    """
    device = torch.device(device)
    n = len(requests)
    outputs: list[list[int]] = [[] for _ in range(n)]
    done = [r.max_new_tokens <= 0 for r in requests]
    if all(done):
        return outputs
    ids, mask, positions = (t.to(device) for t in left_pad([r.prompt_ids for r in requests], pad_id))
    temps = torch.tensor([float(r.temperature) for r in requests], device=device)
    sampling = any(float(r.temperature) > 0 for r in requests)
    reserve = getattr(runner, "reserve", None)  # runners with a fixed-size cache size it per batch
    if reserve is not None:
        reserve(ids.shape[1] + max(r.max_new_tokens for r in requests))
    runner.start(n)
    try:
        logits = runner.forward(ids, mask, positions)
        while True:
            next_ids = torch.empty(n, dtype=torch.long, device=device)
            if rank == runner.decider_rank:
                next_ids.copy_(_pick(logits, temps, sampling=sampling))
            broadcast_(next_ids, src=runner.decider_rank)
            tokens = next_ids.tolist()
            partial: list[int | None] = []
            for i, tok in enumerate(tokens):
                if done[i]:
                    partial.append(None)
                    continue
                outputs[i].append(tok)
                partial.append(tok)
                done[i] = tok in eos_ids or len(outputs[i]) >= requests[i].max_new_tokens
            if all(done):
                yield partial, list(done)
                return outputs
            # Start the next step before handing these tokens out: on a GPU it runs while
            # the consumer detokenizes and streams them (same steps, same order on every rank).
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            logits = runner.forward(next_ids[:, None], mask, positions)
            yield partial, list(done)
    finally:
        runner.finish()
