"""One step's decisions, made on the leader rank and applied by every rank of the group.

A plan says which prompt chunks are prefilled into which slots, and which slots
decode one token. Every rank must run exactly the same plan at the same step, or
their collectives would pair up wrongly; so the leader packs it into one
fixed-size int64 tensor and broadcasts it (gloo, on the CPU) before the step.
Tokens never travel in the plan: decode inputs are already on every rank's device
(the previous step's sampled tokens were broadcast there).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

RUN, IDLE, STOP = 0, 1, 2
_HEADER = 6  # kind, chunks, active slots, decode rows, decode length, prefill tokens


@dataclass
class Chunk:
    slot: int
    start: int              # position of the chunk's first token
    tokens: list[int]
    sample: bool            # the prompt ends here: sample the sequence's first token


@dataclass
class StepPlan:
    kind: int = RUN
    chunks: list[Chunk] = field(default_factory=list)
    active: list[int] = field(default_factory=list)   # slots that decode this step
    rows: int = 0                                      # decode runs over cache rows 0..rows-1
    length: int = 0                                    # ...reading positions 0..length-1

    @property
    def empty(self) -> bool:
        return not self.chunks and not self.active


def plan_size(slots: int, prefill_tokens: int) -> int:
    """Elements of the broadcast buffer: enough for every slot to be a chunk and to decode."""
    return _HEADER + 4 * slots + slots + prefill_tokens   # 4 values a chunk, 1 an active slot


def encode(plan: StepPlan, buffer: torch.Tensor) -> torch.Tensor:
    tokens = [t for c in plan.chunks for t in c.tokens]
    values = [plan.kind, len(plan.chunks), len(plan.active), plan.rows, plan.length, len(tokens)]
    for c in plan.chunks:
        values += [c.slot, c.start, len(c.tokens), int(c.sample)]
    values += plan.active + tokens
    if len(values) > buffer.numel():
        raise ValueError(f"plan of {len(values)} values does not fit the {buffer.numel()}-value buffer")
    buffer[:len(values)] = torch.tensor(values, dtype=torch.int64)
    return buffer


def decode(buffer: torch.Tensor) -> StepPlan:
    head = buffer[:_HEADER].tolist()
    kind, n_chunks, n_active, rows, length, n_tokens = head
    body = buffer[_HEADER:_HEADER + 4 * n_chunks + n_active + n_tokens].tolist()
    meta, rest = body[:4 * n_chunks], body[4 * n_chunks:]
    active, tokens = rest[:n_active], rest[n_active:]
    chunks, offset = [], 0
    for i in range(n_chunks):
        slot, start, count, sample = meta[4 * i:4 * i + 4]
        chunks.append(Chunk(slot, start, tokens[offset:offset + count], bool(sample)))
        offset += count
    return StepPlan(kind, chunks, active, rows, length)
