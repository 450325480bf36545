"""Run a hand-built pipeline stage with torch.distributed.pipelining's GPipe schedule.

Stages are built by hand (``sharded.load_stage``); tracing with ``pipeline()``
fails on torch 2.11. A ``PipelineStage`` allocates its receive buffers once,
for one input shape, so a schedule is kept per (microbatch size, sequence
length): one for each prefill, one reused by every decode step. Shapes are
given statically (``input_args``/``output_args`` on the meta device), which
avoids the shape-inference forward that would otherwise touch the KV cache.

Microbatches must be equal (the receive buffers are sized from the first),
so a batch is padded up to a multiple of the microbatch count by repeating
its last row; those rows' logits are dropped.
"""
from __future__ import annotations

import torch


class PipelineRunner:
    def __init__(self, stage, layout, chunks: int, hidden: int, vocab: int, dtype):
        self.stage, self.layout = stage, layout
        self.chunks = max(1, int(chunks))
        self.hidden, self.vocab, self.dtype = hidden, vocab, dtype
        self.decider_rank = layout.decider_rank
        self._schedules: dict[tuple[int, int], object] = {}
        self._decode: dict[tuple[int, int], object] = {}   # kept across batches
        self.n_micro = self.padded = self.batch = 0

    def start(self, batch_size: int) -> None:
        self.batch = batch_size
        self.n_micro = min(self.chunks, batch_size)
        self.padded = -(-batch_size // self.n_micro) * self.n_micro
        self.stage.caches.clear()
        self._schedules = {}

    def finish(self) -> None:
        self.stage.caches.clear()
        self._schedules = {}

    def _schedule(self, mb: int, seq: int):
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

        key = (mb, seq)
        store = self._decode if seq == 1 else self._schedules
        if key in store and store[key][1] == self.n_micro:
            return store[key][0]
        meta = torch.device("meta")
        if self.stage.first:
            inputs = torch.empty(mb, seq, dtype=torch.long, device=meta)
        else:
            inputs = torch.empty(mb, seq, self.hidden, dtype=self.dtype, device=meta)
        if self.stage.last:
            outputs = torch.empty(mb, self.vocab, dtype=self.dtype, device=meta)
        else:
            outputs = torch.empty(mb, seq, self.hidden, dtype=self.dtype, device=meta)
        pstage = PipelineStage(
            self.stage, self.layout.pp_index, self.layout.pp, self.layout.device,
            input_args=(inputs,), output_args=(outputs,), group=self.layout.pp_group,
        )
        schedule = ScheduleGPipe(pstage, n_microbatches=self.n_micro)
        store[key] = (schedule, self.n_micro)
        return schedule

    def forward(self, input_ids, attention_mask, position_ids):
        rows = torch.arange(self.padded, device=input_ids.device).clamp(max=self.batch - 1)
        input_ids, attention_mask, position_ids = (t.index_select(0, rows) for t in (input_ids, attention_mask, position_ids))
        schedule = self._schedule(self.padded // self.n_micro, input_ids.shape[1])
        kwargs = {"attention_mask": attention_mask, "position_ids": position_ids,
                  "rows": torch.arange(self.padded, device=input_ids.device)}
        with torch.no_grad():
            if self.stage.first:
                out = schedule.step(input_ids, **kwargs)
            else:
                out = schedule.step(**kwargs)
        return out[: self.batch] if self.stage.last else None
