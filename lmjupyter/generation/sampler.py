"""Next tokens from logits, on the device that holds them, for a batch with per-row settings.

Greedy rows take the argmax. Sampled rows use the Gumbel-max trick: the argmax of
``logits / T + g`` where ``g = -log(-log(u))`` is a draw from ``softmax(logits / T)``.
The uniforms ``u`` are not drawn from a random generator but computed by hashing
(row key, step, token id) with integer arithmetic, so that

* a request with a ``seed`` gets the same tokens whatever else shares its batch,
  on any device and any number of ranks (its key comes from the seed alone);
* no generator state is kept or synchronised between ranks or steps.

Requests without a seed get a random key when they are admitted. ``top_k`` and
``top_p`` cut the distribution first (sorted once per sampled step).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2**32 for x < 2**32, without int64 overflow (halves of 16 bits)."""
    hi = ((x >> 16) * m) & 0xFFFF
    lo = (x & 0xFFFF) * m
    return ((hi << 16) + lo) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) of int64 tensors holding values < 2**32."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def request_key(seed: int | None) -> int:
    """The 32-bit key a request's uniforms are hashed from: from its seed, else random."""
    if seed is None:
        return int.from_bytes(os.urandom(4), "little")
    seed %= 1 << 64
    low = torch.tensor([seed & _MASK32], dtype=torch.int64)
    high = mix32(torch.tensor([seed >> 32], dtype=torch.int64))
    return int(mix32(low ^ high)[0])


def uniforms(keys: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """u[r, j] in (0, 1) from (keys[r], steps[r], j); float32, [rows, vocab]."""
    row = mix32((keys ^ _mul32(steps & _MASK32, 0x9E3779B1)) & _MASK32)
    token = _mul32(torch.arange(vocab, device=keys.device, dtype=torch.int64), 0x85EBCA6B)
    bits = mix32(row[:, None] ^ token[None, :])
    return ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))


@dataclass
class BatchSampling:
    """Per-row settings of the rows being sampled, as device tensors (built when the rows change)."""

    temperature: torch.Tensor | None   # float32 [rows]; 0 for greedy rows (None: every row greedy)
    top_p: torch.Tensor | None         # float32 [rows]
    top_k: torch.Tensor | None         # int64 [rows]; 0: off
    keys: torch.Tensor | None          # int64 [rows]
    any_sampled: bool
    any_filtered: bool          # some row has top_p < 1 or top_k > 0

    @classmethod
    def build(cls, params: list, keys: list[int], device) -> "BatchSampling":
        temperature = [p.temperature if p is not None else 0.0 for p in params]
        top_p = [p.top_p if p is not None else 1.0 for p in params]
        top_k = [p.top_k if p is not None else 0 for p in params]
        sampled = [t > 0 for t in temperature]
        if not any(sampled):   # greedy rows need no tensors (and no copy to the device)
            return cls(None, None, None, None, False, False)
        return cls(torch.tensor(temperature, dtype=torch.float32, device=device),
                   torch.tensor(top_p, dtype=torch.float32, device=device),
                   torch.tensor(top_k, dtype=torch.int64, device=device),
                   torch.tensor(keys, dtype=torch.int64, device=device),
                   any(sampled),
                   any(s and (p < 1.0 or k > 0) for s, p, k in zip(sampled, top_p, top_k)))


def sample(logits: torch.Tensor, settings: BatchSampling, steps: torch.Tensor) -> torch.Tensor:
    """One token id per row (int64, on the logits' device)."""
    greedy = logits.argmax(-1)
    if not settings.any_sampled:
        return greedy
    scaled = logits.float() / settings.temperature.clamp(min=1e-5)[:, None]
    if settings.any_filtered:
        scaled = _cut(scaled, settings.top_p, settings.top_k)
    noise = -torch.log(-torch.log(uniforms(settings.keys, steps, logits.shape[-1])))
    sampled = (scaled + noise).argmax(-1)
    return torch.where(settings.temperature > 0, sampled, greedy)


def _cut(scaled: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """-inf outside each row's top-k and its smallest set of tokens whose probability reaches top_p."""
    ordered, order = scaled.sort(-1, descending=True)
    probs = ordered.softmax(-1)
    before = probs.cumsum(-1) - probs            # probability of the tokens ranked above
    rank = torch.arange(scaled.shape[-1], device=scaled.device)[None, :]
    keep = (before < top_p[:, None]) & ((top_k[:, None] == 0) | (rank < top_k[:, None]))
    keep[:, 0] = True
    cut = torch.full_like(scaled, float("-inf"))
    return cut.scatter(-1, order, torch.where(keep, ordered, cut))


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, top: int):
    """The chosen tokens' log-probabilities and the ``top`` most likely (ids, log-probabilities), per row."""
    logp = torch.log_softmax(logits.float(), -1)
    chosen = logp.gather(-1, tokens[:, None])[:, 0]
    if top > 0:
        values, ids = logp.topk(top, -1)
        return chosen, ids, values
    return chosen, None, None
