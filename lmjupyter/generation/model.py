"""A compact decoder over the slot KV cache: one stage of layers (all of them for one rank).

Plain PyTorch, gpt-fast style: every block is two fused matmuls in, two out, and
the attention, so that what a decode step does can be read here in one sitting;
the elementwise work between them sits in :mod:`lmjupyter.generation.fused`, which
``handler.compile`` turns into single kernels.
Hugging Face's modelling code stays the reference: tests compare greedy tokens
with ``generate`` (fp32) and logits within a tolerance (bf16).

Two kinds of call share the blocks:

* **decode** — one token for each of the cache rows ``0..rows-1`` (a row is a
  slot), reading its token and position from the engine's device buffers; the
  key/values are written at each row's position and attention reads the first
  ``length`` positions of the rows' own cache, masked by position. No gathers, no
  host values: the call can be captured in a CUDA graph per (rows, length).
* **prefill** — ``T`` prompt tokens for each of ``n`` slots (padded; padding writes
  into a scratch row of the cache), written at their positions; attention reads
  those slots' cache up to ``length``. Fixed shapes per (n, T, length): capturable too.

With tensor parallelism each rank holds ``heads / tp`` heads and ``1/tp`` of the
MLP; the block all-reduces after its attention and MLP outputs (``tp_group``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmjupyter.generation.cache import SlotCache
from lmjupyter.generation.fused import Regions
from lmjupyter.generation.spec import DecoderSpec
from lmjupyter.generation.weights import StageWeights


@dataclass
class StagePlace:
    """Where this rank sits: its layers, whether it embeds or projects, its tp group."""

    layer_range: tuple[int, int]
    first: bool = True
    last: bool = True
    tp: int = 1
    tp_index: int = 0
    tp_group: object = None


def rotary_tables(config, spec: DecoderSpec, length: int, device, dtype):
    """cos/sin for positions 0..length-1, computed as Hugging Face's rotary embedding computes them."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rotary = LlamaRotaryEmbedding(config=config)
    inv_freq = rotary.inv_freq.float()
    freqs = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([freqs, freqs], dim=-1)
    scale = float(rotary.attention_scaling)
    return ((angles.cos() * scale).to(device=device, dtype=dtype),
            (angles.sin() * scale).to(device=device, dtype=dtype))


class CompactDecoder:
    def __init__(self, spec: DecoderSpec, weights: StageWeights, place: StagePlace, cache: SlotCache,
                 rotary: tuple[torch.Tensor, torch.Tensor] | None, regions: Regions | None = None):
        self.spec, self.w, self.place, self.cache = spec, weights, place, cache
        self.regions = regions or Regions()
        self.cos, self.sin = rotary if rotary is not None else (None, None)
        tp = place.tp
        self.q_heads, self.kv_heads = spec.heads // tp, spec.kv_heads // tp
        self.q_size, self.kv_size = self.q_heads * spec.head_dim, self.kv_heads * spec.head_dim
        self.group = self.q_heads // self.kv_heads
        start, _ = place.layer_range
        self.scales = [spec.attn_scale / (start + i + 1) if spec.scale_by_layer else spec.attn_scale
                       for i in range(len(weights.layers))]

    # ---- the two entry points -----------------------------------------------------------
    @torch.no_grad()
    def decode(self, x: torch.Tensor, pos: torch.Tensor, length: int) -> torch.Tensor:
        """x: token ids [rows] (first stage) or hidden [rows, 1, H]; pos: [rows]. Logits [rows, V] or hidden."""
        rows = pos.shape[0]
        positions = pos[:, None]
        keys = torch.arange(length, device=pos.device)
        visible = keys[None, :] <= pos[:, None]                          # [rows, length]
        mask = torch.zeros(visible.shape, dtype=self.cache.dtype, device=pos.device)
        mask.masked_fill_(~visible, float("-inf"))
        # the mask as baddbmm's addend: one GEMM kernel scales the scores and masks them
        addend = mask[:, None, None, :].expand(rows, self.kv_heads, self.group, length)
        addend = addend.reshape(rows * self.kv_heads, self.group, length)
        store = torch.arange(rows, device=pos.device), pos      # each row writes its own slot, at its position

        def attend(layer: int, q):
            kc, vc = self.cache.k[layer], self.cache.v[layer]
            d = self.spec.head_dim
            q = q.reshape(rows * self.kv_heads, self.group, d)
            keys = kc[:rows, :, :length].reshape(rows * self.kv_heads, length, d)   # a view: no copy
            scores = torch.baddbmm(addend, q, keys.transpose(1, 2), alpha=self.scales[layer])
            probs = torch.softmax(scores, -1)   # one kernel; accumulates in float32 for bf16
            out = torch.bmm(probs, vc[:rows, :, :length].reshape(rows * self.kv_heads, length, d))
            return out.reshape(rows, 1, self.q_size)

        hidden = self._embed(x[:, None], positions) if self.place.first else x
        hidden = self._blocks(hidden, positions, store, attend)
        return self._project(hidden[:, 0]) if self.place.last else hidden

    @torch.no_grad()
    def prefill(self, x: torch.Tensor, slots: torch.Tensor, pos: torch.Tensor, write_slots: torch.Tensor,
                write_pos: torch.Tensor, length: int, last_cols: torch.Tensor) -> torch.Tensor:
        """x: ids [n, T] or hidden [n, T, H]; slots [n]; pos [n, T]; every token writes its key/value
        at (write_slots, write_pos) [n, T] — padding writes into the cache's scratch row — so that the
        call has fixed shapes per (n, T, length) and can be captured; ``last_cols`` [n] picks each
        row's position for the logits. Attention reads the rows' slots up to ``length``."""
        n, width = pos.shape
        keys = torch.arange(length, device=pos.device)
        visible = keys[None, None, :] <= pos[:, :, None]                  # [n, T, length]
        store = write_slots.reshape(-1), write_pos.reshape(-1)

        def attend(layer: int, q):
            kc, vc = self.cache.k[layer], self.cache.v[layer]
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), kc[slots, :, :length], vc[slots, :, :length], attn_mask=visible[:, None],
                scale=self.scales[layer], enable_gqa=self.group > 1)
            return out.transpose(1, 2).reshape(n, width, self.q_size)

        hidden = self._embed(x, pos) if self.place.first else x
        hidden = self._blocks(hidden, pos, store, attend)
        if not self.place.last:
            return hidden
        return self._project(hidden[torch.arange(n, device=pos.device), last_cols])

    # ---- the pieces ------------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.place.tp > 1:  # this rank's vocabulary rows; the others' lookups are summed in
            shard = self.w.embed.shape[0]
            local = ids - self.place.tp_index * shard
            inside = (local >= 0) & (local < shard)
            hidden = F.embedding(local.clamp(0, shard - 1), self.w.embed) * inside[..., None].to(self.w.embed.dtype)
            hidden = self._reduce(hidden)
        else:
            hidden = F.embedding(ids, self.w.embed)
        if self.w.positions is not None:
            hidden = hidden + F.embedding(positions, self.w.positions)
        return hidden

    def _blocks(self, hidden: torch.Tensor, positions: torch.Tensor, store, attend) -> torch.Tensor:
        """The stage's layers; each residual add is fused with the norm that follows it, and the new
        keys/values are stored (at ``store``: flat slots and positions) by the rotation's region."""
        fx, spec = self.regions, self.spec
        cos = sin = None
        if self.cos is not None:
            cos, sin = self.cos[positions][:, :, None, :], self.sin[positions][:, :, None, :]
        layers = self.w.layers
        h = fx.norm(hidden, layers[0].norm1, layers[0].norm1_bias, spec.norm_eps, spec.llama_like)
        for i, w in enumerate(layers):
            q = fx.split_rotate_store(fx.linear(h, w.qkv, w.qkv_bias), cos, sin, self.cache.k[i], self.cache.v[i],
                                      *store, self.q_heads, self.kv_heads, spec.head_dim)
            out = self._reduce(fx.linear(attend(i, q), w.o))
            hidden, h = fx.add_norm(hidden, out, w.o_bias, w.norm2, w.norm2_bias, spec.norm_eps, spec.llama_like)
            out = self._reduce(fx.linear(fx.activate(fx.linear(h, w.up, w.up_bias), spec.llama_like), w.down))
            if i + 1 < len(layers):
                nxt = layers[i + 1]
                hidden, h = fx.add_norm(hidden, out, w.down_bias, nxt.norm1, nxt.norm1_bias, spec.norm_eps,
                                        spec.llama_like)
            else:
                hidden = hidden + out if w.down_bias is None else hidden + out + w.down_bias
        return hidden

    def _norm(self, x, weight, bias):
        return self.regions.norm(x, weight, bias, self.spec.norm_eps, self.spec.llama_like)

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.place.tp > 1:
            import torch.distributed as dist

            dist.all_reduce(x, group=self.place.tp_group)
        return x

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.regions.linear(self._norm(hidden, self.w.norm, self.w.norm_bias), self.w.head)
        if self.place.tp > 1:
            import torch.distributed as dist

            shards = [torch.empty_like(logits) for _ in range(self.place.tp)]
            dist.all_gather(shards, logits.contiguous(), group=self.place.tp_group)
            logits = torch.cat(shards, dim=-1)
        return logits[..., : self.spec.vocab]
