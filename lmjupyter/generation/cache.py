"""The KV cache: one row (slot) per running sequence, allocated once when the worker starts.

``k[layer]`` and ``v[layer]`` are ``[slots + 1, kv_heads, max_len, head_dim]``: the last
row (``scratch``) takes the writes of padding tokens and is never read as a sequence. A
sequence keeps its slot from admission to retirement and writes position ``p`` of
its row; nothing is moved or re-padded when others join or leave. Positions past
a sequence's length may hold stale values: attention only ever reads positions
``<=`` the query's own, and every position is written before it is reached.
"""
from __future__ import annotations

import torch


class CacheTooLarge(RuntimeError):
    """The cache does not fit the device; the message says how much it needs and how to shrink it."""


class SlotCache:
    def __init__(self, layers: int, slots: int, kv_heads: int, max_len: int, head_dim: int, dtype, device):
        self.slots, self.max_len, self.dtype = slots, max_len, dtype
        self.scratch = slots
        shape = (slots + 1, kv_heads, max_len, head_dim)
        need = 2 * layers * (slots + 1) * kv_heads * max_len * head_dim * torch.empty((), dtype=dtype).element_size()
        try:
            self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
            self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        except torch.OutOfMemoryError:
            raise CacheTooLarge(
                f"the KV cache of {slots} slots (batchSize) x {max_len} tokens (handler.max_seq_len) needs "
                f"{need / 2**30:.2f} GiB on {device}, more than is free: lower batchSize or handler.max_seq_len"
            ) from None
        self.nbytes = need
