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

from lmjupyter.generation.graphs import DecodeGraphs
from lmjupyter.generation.model import CompactDecoder
from lmjupyter.generation.plan import Chunk, StepPlan
from lmjupyter.generation.sampler import BatchSampling, logprobs_of, sample


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
                 graphs: bool = False, compile: bool = False, slot_settings=None):
        self.model, self.place = model, place
        self.device, self.slots, self.hidden, self.dtype = torch.device(device), slots, hidden, dtype
        self.last_token = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.position = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.slot_settings = slot_settings if slot_settings is not None else {}
        forward = self._decode_forward
        if compile:   # inductor fuses the small kernels of a block; one compile, dynamic in rows and length
            forward = torch.compile(forward, dynamic=True)
        self.forward = forward
        self.graphs = DecodeGraphs(forward) if graphs else None
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
        picked_logits, picked = [], []
        for group in _padding_groups(chunks):
            logits = self._prefill_group(group)
            picks = [i for i, c in enumerate(group) if c.sample]
            if logits is not None and picks:
                picked_logits.append(logits[picks])
                picked += [group[i] for i in picks]
        slots = torch.tensor([c.slot for c in chunks], device=self.device)
        ends = torch.tensor([c.start + len(c.tokens) for c in chunks], device=self.device)
        self.position.index_copy_(0, slots, ends)  # before the decode step writes at these positions
        sampled = [c for c in chunks if c.sample]
        if not self.place.is_decider or not sampled:
            return None
        where = {id(c): i for i, c in enumerate(picked)}
        logits = torch.cat(picked_logits)[torch.tensor([where[id(c)] for c in sampled], device=self.device)]
        steps = torch.tensor([c.start + len(c.tokens) for c in sampled], device=self.device)
        tokens = sample(logits, self._settings([c.slot for c in sampled]), steps)
        if logprobs is not None:
            out.logprobs["first"] = logprobs_of(logits, tokens, logprobs)
        return tokens

    def _prefill_group(self, group: list[Chunk]) -> torch.Tensor | None:
        n, width = len(group), max(len(c.tokens) for c in group)
        ids = torch.zeros((n, width), dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        rows, cols = [], []
        for r, c in enumerate(group):
            count = len(c.tokens)
            ids[r, :count] = torch.tensor(c.tokens)
            pos[r] = torch.arange(width).clamp(max=count - 1) + c.start
            rows += [r] * count
            cols += range(count)
        length = max(c.start + len(c.tokens) for c in group)
        to = self.device
        slots = torch.tensor([c.slot for c in group], device=to)
        last_cols = torch.tensor([len(c.tokens) - 1 for c in group], device=to)
        x = ids.to(to) if self.model.place.first else self._receive((n, width, self.hidden))
        result = self.model.prefill(x, slots, pos.to(to), torch.tensor(rows, device=to), torch.tensor(cols, device=to),
                                    length, last_cols)
        if not self.model.place.last:
            self._send(result)
            return None
        return result

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
            self.last_token.index_copy_(0, torch.tensor(sampled, device=self.device), first)
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
            mask = torch.zeros(plan.rows, dtype=torch.bool)
            mask[plan.active] = True
            self._active = (key, mask.to(self.device))
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
