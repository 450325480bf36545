"""Run one step's plan on this rank: prefill chunks, one decode step, sampling, the token broadcast.

Every rank of the group calls :meth:`StepExecutor.run` with the same plan. The
device buffers ``last_token`` and ``position`` (one entry per slot) carry each
sequence from step to step, so a decode step reads no host values: its inputs
are the tokens the previous step left there. In a pipeline, stages pass hidden
states forward (``send``/``recv`` to the same tp index of the next stage); the
decider (last stage, tp index 0) samples, and broadcasts the tokens so that every
rank updates the same buffers. Only the decider's :class:`StepOutput` holds tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from lmjupyter.generation.graphs import BucketGraphs
from lmjupyter.generation.model import CompactDecoder
from lmjupyter.generation.plan import Chunk, StepPlan
from lmjupyter.generation.sampler import BatchSampling, logprobs_of, sample
from lmjupyter.generation.scheduler import bucket
from lmjupyter.generation.staging import Staging


@dataclass
class GroupPlace:
    """This rank in the worker group: who decides, and its pipeline neighbours (global ranks)."""

    world: int = 1
    rank: int = 0
    decider: int = 0
    prev: int | None = None
    next: int | None = None

    @property
    def is_decider(self) -> bool:
        return self.rank == self.decider


@dataclass
class StepOutput:
    """The decider's results of one step, on the device until :meth:`fetch` copies them."""

    decode: torch.Tensor | None = None                 # [rows] sampled tokens (rows by slot)
    first: torch.Tensor | None = None                  # [sampled chunks] first tokens
    logprobs: dict = field(default_factory=dict)       # "decode"/"first" -> (chosen, top ids, top values)
    _event: object = None

    def start_copy(self, pinned: "HostBuffers | None" = None) -> None:
        """Begin moving the results to the host without waiting for the device."""
        if pinned is None or not any(t is not None and t.is_cuda for t in (self.decode, self.first)):
            return
        self.decode, self.first = pinned.store(self.decode, self.first)
        self.logprobs = {k: tuple(t.to("cpu", non_blocking=True) if t is not None else None for t in v)
                         for k, v in self.logprobs.items()}
        self._event = torch.cuda.Event()
        self._event.record()

    def fetch(self) -> "StepOutput":
        if self._event is not None:
            self._event.synchronize()
        return self


class HostBuffers:
    """Pinned host memory for a step's tokens, so that their copy off the device does not block.
    Two sets alternate: the leader reads step N's while step N+1's copy is queued."""

    def __init__(self, size: int):
        self._sets = [(torch.empty(size, dtype=torch.long, pin_memory=True),
                       torch.empty(size, dtype=torch.long, pin_memory=True)) for _ in range(2)]
        self._turn = 0

    def store(self, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
        self._turn ^= 1
        out = []
        for tensor, host in zip(tensors, self._sets[self._turn]):
            if tensor is not None:
                host = host[:tensor.numel()]
                host.copy_(tensor, non_blocking=True)
                tensor = host
            out.append(tensor)
        return out


class StepExecutor:
    def __init__(self, model: CompactDecoder, place: GroupPlace, device, slots: int, hidden: int, dtype,
                 graphs: bool = False, slot_settings=None):
        self.model, self.place = model, place
        self.device, self.slots, self.hidden, self.dtype = torch.device(device), slots, hidden, dtype
        self.last_token = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.position = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.slot_settings = slot_settings if slot_settings is not None else {}
        self.forward = self._decode_forward
        self.graphs = BucketGraphs(self._decode_forward) if graphs else None
        self.prefill_graphs = BucketGraphs(self._prefill_forward) if graphs and model.place.first else None
        self._prefill_buffers: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.staging = Staging(self.device)
        self.last_plan: StepPlan | None = None
        self._sampling: tuple | None = None  # (request ids of the decode rows, their BatchSampling)
        self._active: tuple | None = None    # ((rows, active slots), device mask)
        self.host_buffers = HostBuffers(slots) if self.device.type == "cuda" and place.is_decider else None

    # ---- one step --------------------------------------------------------------------------
    def run(self, plan: StepPlan, logprobs: int | None = None) -> StepOutput | None:
        """Execute ``plan``; ``logprobs`` (decider) is the most alternatives any row asked for, or None."""
        self.last_plan = plan
        out = StepOutput() if self.place.is_decider else None
        first = self._prefill(plan.chunks, out, logprobs) if plan.chunks else None
        decoded = self._decode(plan, out, logprobs) if plan.active else None
        self._share_tokens(plan, first, decoded)
        if out is not None:
            out.first, out.decode = first, decoded
        return out

    # ---- prefill ----------------------------------------------------------------------------
    def _prefill(self, chunks: list[Chunk], out, logprobs) -> torch.Tensor | None:
        """All chunks' prompts into the cache, in groups that waste at most half their work on padding;
        on the decider, the first token of each prompt that ends here (in plan order)."""
        sampled = [c for c in chunks if c.sample]
        slots, ends, steps = self.staging.put([c.slot for c in chunks], [c.start + len(c.tokens) for c in chunks],
                                              [c.start + len(c.tokens) for c in sampled])
        picked_logits, picked = [], []
        for group in _padding_groups(chunks):
            logits = self._prefill_group(group)
            picks = [i for i, c in enumerate(group) if c.sample]
            if logits is not None and picks:
                picked_logits.append(logits[picks])   # a copy: a graph's output is reused by its next replay
                picked += [group[i] for i in picks]
        self.position.index_copy_(0, slots, ends)  # before the decode step writes at these positions
        if not self.place.is_decider or not sampled:
            return None
        where = {id(c): i for i, c in enumerate(picked)}
        logits = torch.cat(picked_logits)
        if [where[id(c)] for c in sampled] != list(range(len(sampled))):
            logits = logits[[where[id(c)] for c in sampled]]
        tokens = sample(logits, self._settings([c.slot for c in sampled]), steps)
        if logprobs is not None:
            out.logprobs["first"] = logprobs_of(logits, tokens, logprobs)
        return tokens

    def _prefill_group(self, group: list[Chunk]) -> torch.Tensor | None:
        """One padded prefill call: rows and width rounded up to buckets, padding into the scratch row."""
        scratch, max_len = self.model.cache.scratch, self.model.cache.max_len
        n = bucket(len(group), self.slots)
        width = bucket(max(len(c.tokens) for c in group), max_len, 16)
        length = bucket(max(c.start + len(c.tokens) for c in group), max_len, 16)
        ids, pos, write_slots, write_pos = ([0] * (n * width) for _ in range(4))
        slots, last = [scratch] * n, [0] * n
        for r, c in enumerate(group):
            count = len(c.tokens)
            slots[r], last[r] = c.slot, count - 1
            for t in range(width):
                i = r * width + t
                pos[i] = c.start + min(t, count - 1)     # padding repeats the last real position
                if t < count:
                    ids[i], write_slots[i], write_pos[i] = c.tokens[t], c.slot, c.start + t
                else:
                    write_slots[i] = scratch
        for i in range(len(group) * width, n * width):
            write_slots[i] = scratch
        staged = self.staging.put(ids, pos, write_slots, write_pos, slots, last)
        inputs = self._prefill_inputs(n, width)
        for buffer, values in zip(inputs, staged):
            buffer.copy_(values.view(buffer.shape))
        if not self.model.place.first:
            inputs[0] = self._receive((n, width, self.hidden))
            result = self._prefill_forward(n, width, length, x=inputs[0])
        elif self.prefill_graphs is not None:
            result = self.prefill_graphs.run(n, width, length)
        else:
            result = self._prefill_forward(n, width, length)
        if not self.model.place.last:
            self._send(result)
            return None
        return result

    def _prefill_inputs(self, n: int, width: int) -> list[torch.Tensor]:
        """The fixed input buffers of a prefill bucket: ids, pos, write slots, write positions [n, width];
        slots, last columns [n]."""
        key = (n, width)
        if key not in self._prefill_buffers:
            grid = lambda: torch.zeros((n, width), dtype=torch.long, device=self.device)  # noqa: E731
            row = lambda: torch.zeros(n, dtype=torch.long, device=self.device)  # noqa: E731
            self._prefill_buffers[key] = [grid(), grid(), grid(), grid(), row(), row()]
        return list(self._prefill_buffers[key])

    def _prefill_forward(self, n: int, width: int, length: int, x: torch.Tensor | None = None):
        ids, pos, write_slots, write_pos, slots, last = self._prefill_buffers[(n, width)]
        return self.model.prefill(ids if x is None else x, slots, pos, write_slots, write_pos, length, last)

    # ---- decode ------------------------------------------------------------------------------
    def _decode_forward(self, rows: int, length: int):
        x = self.last_token[:rows] if self.model.place.first else self._receive((rows, 1, self.hidden))
        return self.model.decode(x, self.position[:rows], length)

    def _decode(self, plan: StepPlan, out, logprobs) -> torch.Tensor | None:
        if self.graphs is not None:
            result = self.graphs.run(plan.rows, plan.length)
        else:
            result = self.forward(plan.rows, plan.length)
        if not self.model.place.last:
            self._send(result)
            return None
        if not self.place.is_decider:
            return None
        settings = self._settings(list(range(plan.rows)), keep=True)
        tokens = sample(result, settings, self.position[:plan.rows])
        if logprobs is not None:
            out.logprobs["decode"] = logprobs_of(result, tokens, logprobs)
        return tokens

    def _settings(self, slots: list[int], keep: bool = False) -> BatchSampling:
        """Sampling settings of these slots' sequences (``slot_settings``: slot -> (rid, params, key),
        kept by the leader); the decode rows' are kept until a row changes hands."""
        entries = [self.slot_settings.get(s, (None, None, 0)) for s in slots]
        key = tuple(rid for rid, _, _ in entries)
        if keep and self._sampling is not None and self._sampling[0] == key:
            return self._sampling[1]
        built = BatchSampling.build([p for _, p, _ in entries], [k for _, _, k in entries], self.device)
        if keep:
            self._sampling = (key, built)
        return built

    # ---- moving tokens and hidden states ------------------------------------------------------
    def _share_tokens(self, plan: StepPlan, first, decoded) -> None:
        """Every rank gets the decider's tokens and applies the same buffer updates."""
        sampled = [c.slot for c in plan.chunks if c.sample]
        count = len(sampled) + (plan.rows if plan.active else 0)
        if count == 0:
            return
        if self.place.world > 1:
            buffer = torch.empty(count, dtype=torch.long, device=self.device)
            if self.place.is_decider:
                parts = [t for t in (first, decoded) if t is not None]
                buffer.copy_(torch.cat(parts))
            dist.broadcast(buffer, src=self.place.decider)
            first = buffer[:len(sampled)] if sampled else None
            decoded = buffer[len(sampled):] if plan.active else None
        if sampled:
            self.last_token.index_copy_(0, self.staging.put(sampled)[0], first)
        if plan.active:
            rows = plan.rows
            active = self._active_mask(plan)
            self.last_token[:rows] = torch.where(active, decoded, self.last_token[:rows])
            self.position[:rows] += active

    def _active_mask(self, plan: StepPlan) -> torch.Tensor:
        """Which decode rows are real sequences, on the device; kept while the set is unchanged, since a
        copy to the device every step would make the host wait for the step it just launched."""
        key = (plan.rows, tuple(plan.active))
        if self._active is None or self._active[0] != key:
            active = set(plan.active)
            mask = self.staging.put([int(r in active) for r in range(plan.rows)])[0]
            self._active = (key, mask.bool())
        return self._active[1]

    def _send(self, tensor: torch.Tensor) -> None:
        dist.send(tensor.contiguous(), dst=self.place.next)

    def _receive(self, shape) -> torch.Tensor:
        buffer = torch.empty(shape, dtype=self.dtype, device=self.device)
        dist.recv(buffer, src=self.place.prev)
        return buffer


def _padding_groups(chunks: list[Chunk]) -> list[list[Chunk]]:
    """Chunks grouped (longest first) so that each group's padded size is at most twice its tokens.
    Every rank forms the same groups from the same plan."""
    groups: list[list[Chunk]] = []
    for chunk in sorted(chunks, key=lambda c: -len(c.tokens)):
        if groups:
            group = groups[-1]
            width = len(group[0].tokens)
            if width * (len(group) + 1) <= 2 * (sum(len(c.tokens) for c in group) + len(chunk.tokens)):
                group.append(chunk)
                continue
        groups.append([chunk])
    return groups
