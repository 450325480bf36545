"""One process on a GPU: a static KV cache and one CUDA graph per decode shape.

An eager decode step of a Hugging Face model is a few hundred small kernel
launches, so on a GPU a small model spends its time in Python and the CUDA
launch path, not in the GPU (DESIGN.md: 11.4 ms per step eager against about
0.1 ms of memory traffic for an 8-layer, 1024-wide Llama on an H100). This
runner keeps the KV cache in fixed buffers (transformers' ``StaticCache``) and
captures the one-token decode step, forward pass included, in a
``torch.cuda.CUDAGraph``, once per (batch bucket, cache length bucket), then
replays it for every step of every later batch of that shape.

Everything the captured step reads lives at a fixed address: the token ids,
the positions, the cache slot the step writes (``slot``), and a 4D additive
attention mask over the whole cache (``0`` where a row may attend, the
dtype's minimum elsewhere). Passing a 4D mask makes the model use it as is,
so no data-dependent mask code runs inside the graph. The step marks its own
slot as visible, runs the model, and advances ``slot``; the cache layers
advance their own write position the same way.

Batches are padded up to a bucket (1, 2, 4, 8, ...) with rows that see
nothing and whose logits are dropped; the cache length is the next power of
two (at least ``MIN_CACHE_LEN``) above the padded prompt width plus the
longest request's budget. A batch larger than ``max_batch`` or a model whose
cache is not made of plain static layers (sliding windows) runs on the eager
``ModelRunner`` instead, as does everything when ``graphs`` is off and the
device is not CUDA. With ``graphs=False`` the static-cache path itself runs
eagerly, which is how it is tested on CPU.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import torch

from lmjupyter.handlers.parallel.families import cache_kwarg
from lmjupyter.handlers.parallel.generation import ModelRunner

log = logging.getLogger(__name__)

MIN_CACHE_LEN = 256
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_SHAPES = 8   # (batch, length) buckets kept, each with its cache and graph


def bucket_batch(n: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return b


def bucket_length(n: int) -> int:
    length = MIN_CACHE_LEN
    while length < n:
        length *= 2
    return length


class CaptureFailed(RuntimeError):
    pass


class _Shape:
    """Cache, fixed input buffers and (once captured) the graph of one (batch, length) bucket."""

    def __init__(self, model, cache_kw: str, batch: int, length: int, device, dtype):
        from transformers import StaticCache

        self.model, self.cache_kw = model, cache_kw
        self.batch, self.length = batch, length
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        kinds = {type(layer).__name__ for layer in getattr(self.cache, "layers", [])}
        if kinds != {"StaticLayer"}:
            raise TypeError(f"static decoding needs plain static cache layers, got {sorted(kinds) or 'none'}")
        self.neg = torch.finfo(dtype).min
        self.ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.slot = torch.zeros((1,), dtype=torch.long, device=device)
        self.mask = torch.full((batch, 1, 1, length), self.neg, dtype=dtype, device=device)
        self.graph = None
        self.logits = None

    # ---- prefill (eager) ------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids, attention_mask, position_ids):
        n, width = input_ids.shape
        if width >= self.length:
            raise ValueError(f"prompt width {width} does not fit a cache of {self.length}")
        device = input_ids.device
        ids = torch.zeros((self.batch, width), dtype=torch.long, device=device)
        pad = torch.zeros((self.batch, width), dtype=torch.bool, device=device)
        pos = torch.zeros((self.batch, width), dtype=torch.long, device=device)
        ids[:n], pad[:n], pos[:n] = input_ids, attention_mask.bool(), position_ids
        self.cache.reset()
        # row b, query q sees key k when k <= q and k is a real token of row b
        causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
        visible = causal[None, :, :] & pad[:, None, :]
        mask = torch.full((self.batch, 1, width, self.length), self.neg, dtype=self.mask.dtype, device=device)
        mask[:, 0, :, :width].masked_fill_(visible, 0.0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         logits_to_keep=1, **{self.cache_kw: self.cache})
        # the decode mask: the prompt's real tokens; later slots open as they are written
        self.mask.fill_(self.neg)
        self.mask[:, 0, 0, :width].masked_fill_(pad, 0.0)
        self.slot.fill_(width)
        self.ids.zero_()
        self.pos.zero_()
        return out.logits[:n, -1, :]

    # ---- decode ---------------------------------------------------------------
    def _step(self):
        self.mask.index_fill_(3, self.slot, 0.0)
        out = self.model(input_ids=self.ids, attention_mask=self.mask, position_ids=self.pos, use_cache=True,
                         logits_to_keep=1, **{self.cache_kw: self.cache})
        self.slot.add_(1)
        return out.logits[:, -1, :]

    def _counters(self):
        return [self.slot] + [layer.cumulative_length for layer in self.cache.layers
                              if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor)]

    def capture(self) -> None:
        """Warm up on a side stream, then capture one step; counters are put back after each."""
        counters = self._counters()
        saved = [c.clone() for c in counters]

        def restore():
            for c, s in zip(counters, saved):
                c.copy_(s)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step()
                restore()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                logits = self._step()
        finally:
            restore()
        self.graph, self.logits = graph, logits

    @torch.no_grad()
    def decode(self, input_ids, position_ids, graphs: bool):
        n = input_ids.shape[0]
        self.ids[:n].copy_(input_ids)
        self.pos[:n].copy_(position_ids)
        if not graphs:
            return self._step()[:n]
        if self.graph is None:
            try:
                self.capture()
            except Exception as exc:  # noqa: BLE001 - any capture failure: say so, decode eagerly
                raise CaptureFailed(f"{type(exc).__name__}: {exc}") from exc
        self.graph.replay()
        return self.logits[:n]


class StaticDecodeRunner:
    """A whole causal LM in this process, decoding from a static cache, with CUDA graphs on CUDA.

    The logits it returns for a decode step are the graph's output buffer: read
    them before the next step (``generate`` does).
    """

    decider_rank = 0

    def __init__(self, model, device, graphs: bool | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                 max_shapes: int = DEFAULT_MAX_SHAPES):
        self.model, self.device = model, torch.device(device)
        self.graphs = (self.device.type == "cuda") if graphs is None else bool(graphs)
        if self.graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.max_batch, self.max_shapes = int(max_batch), int(max_shapes)
        self.dtype = next(model.parameters()).dtype
        self._cache_kw = cache_kwarg(model)
        self.eager = ModelRunner(model, device)
        self.shapes: OrderedDict[tuple[int, int], _Shape] = OrderedDict()
        self.static_ok = True
        self.active = None
        self._length = 0
        self._prefilled = False

    def reserve(self, total_len: int) -> None:
        """Called by ``generate`` before ``start``: padded prompt width plus the longest budget."""
        self._length = int(total_len)

    def _shape(self, n: int) -> _Shape | None:
        if not self.static_ok or n > self.max_batch or not self._length:
            return None
        key = (bucket_batch(n), bucket_length(self._length + 1))
        shape = self.shapes.get(key)
        if shape is None:
            try:
                shape = _Shape(self.model, self._cache_kw, *key, self.device, self.dtype)
            except (TypeError, ValueError) as exc:
                log.warning("static decoding off for this model (%s); decoding eagerly", exc)
                self.static_ok = False
                return None
            self.shapes[key] = shape
            while len(self.shapes) > self.max_shapes:
                self.shapes.popitem(last=False)
        else:
            self.shapes.move_to_end(key)
        return shape

    def start(self, batch_size: int) -> None:
        self.active = self._shape(batch_size)
        self._prefilled = False
        if self.active is None:
            self.eager.start(batch_size)

    def forward(self, input_ids, attention_mask, position_ids):
        if self.active is None:
            return self.eager.forward(input_ids, attention_mask, position_ids)
        if not self._prefilled:
            self._prefilled = True
            return self.active.prefill(input_ids, attention_mask, position_ids)
        if input_ids.shape[1] != 1:
            raise ValueError("after the prompt, a static decode step takes one token per row")
        try:
            return self.active.decode(input_ids, position_ids, self.graphs)
        except CaptureFailed as exc:
            log.warning("CUDA graph capture failed (%s); decoding from the static cache without graphs", exc)
            print(f"lmjupyter: CUDA graph capture failed ({exc}); decoding without graphs", flush=True)
            self.graphs = False
            torch.cuda.synchronize(self.device)
            return self.active.decode(input_ids, position_ids, False)

    def finish(self) -> None:
        self.active = None
        self._length = 0
        self.eager.finish()
