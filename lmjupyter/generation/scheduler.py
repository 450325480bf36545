"""Who is in the batch, decided once per step on the leader rank (the ranks only execute).

Each step the scheduler

1. retires sequences that finished (eos, a stop string, their token budget, a
   cancel), freeing their slots at once;
2. lets every running sequence decode one token;
3. spends up to ``prefill_budget`` prompt tokens: first on prompts already being
   prefilled, then on waiting requests, each taking the lowest free slot (so the
   decoded rows stay packed at the low end of the cache). A prompt longer than
   the budget is prefilled over several steps, so running sequences stall at most
   one chunk.

A sequence's first token is sampled when its last prompt chunk runs; it decodes
from the next step on. Results come back one step late (the leader launches step
N+1 before reading step N's tokens), so a sequence that ends by eos runs one
extra step whose token is dropped; budgets are counted when a token is
*planned*, so a sequence never runs past its ``max_new_tokens``.
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from lmjupyter.generation.detok import IncrementalText
from lmjupyter.generation.params import SamplingParams
from lmjupyter.generation.plan import Chunk, StepPlan


def bucket(n: int, cap: int, floor: int = 1) -> int:
    """The next power of two >= n (at least ``floor``), but never above ``cap``."""
    size = floor
    while size < n:
        size *= 2
    return min(size, cap)


@dataclass(eq=False)
class Sequence:
    rid: int
    prompt: list[int]
    params: SamplingParams
    stream: bool
    key: int                      # the sampler's hash key (from the seed, or random)
    text: IncrementalText
    slot: int | None = None
    prefilled: int = 0            # prompt tokens already in the cache
    scheduled: int = 0            # tokens planned (in flight or known)
    tokens: list[int] = field(default_factory=list)      # tokens known on the host
    logprobs: list = field(default_factory=list)
    finish: str | None = None     # "stop", "length" or "cancelled" once it has ended

    @property
    def prompt_done(self) -> bool:
        return self.prefilled == len(self.prompt)

    @property
    def fully_planned(self) -> bool:
        return self.scheduled >= self.params.max_new_tokens


@dataclass
class Book:
    """What the leader needs to read a step's results: which sequence each sampled token belongs to."""

    decode: list[tuple[int, Sequence]] = field(default_factory=list)   # (slot, sequence)
    sampled: list[Sequence] = field(default_factory=list)              # chunks that sample, in plan order


class Scheduler:
    def __init__(self, slots: int, max_len: int, prefill_budget: int, min_length: int = 64):
        self.slots, self.max_len, self.prefill_budget = slots, max_len, prefill_budget
        self.min_length = min(min_length, max_len)
        self.waiting: deque[Sequence] = deque()
        self.running: dict[int, Sequence] = {}   # slot -> sequence, in admission order
        self._free = list(range(slots))
        heapq.heapify(self._free)

    # ---- arrivals and departures --------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def cancel(self, seq: Sequence) -> None:
        """Stop planning a sequence; its slot is freed at the next step."""
        if seq.finish is None:
            seq.finish = "cancelled"
        if seq.slot is None and seq in self.waiting:
            self.waiting.remove(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting) or any(s.finish is None and not s.fully_planned for s in self.running.values())

    def counts(self) -> tuple[int, int]:
        """(running, waiting) as the metrics show them."""
        return len(self.running), len(self.waiting)

    # ---- one step -------------------------------------------------------------------------
    def plan(self) -> tuple[StepPlan, Book]:
        self._retire()
        plan, book = StepPlan(), Book()
        for slot, seq in self.running.items():
            if seq.prompt_done and seq.scheduled >= 1:
                book.decode.append((slot, seq))
        if book.decode:
            # the input token of a row sits at position len(prompt) + scheduled - 1
            top = max(len(seq.prompt) + seq.scheduled for _, seq in book.decode)
            plan.active = [slot for slot, _ in book.decode]
            plan.rows = bucket(max(plan.active) + 1, self.slots)
            plan.length = bucket(top, self.max_len, self.min_length)
            for _, seq in book.decode:
                seq.scheduled += 1
        budget = self.prefill_budget
        for seq in [s for s in self.running.values() if not s.prompt_done]:
            budget = self._chunk(seq, budget, plan, book)
        while budget > 0 and self.waiting and self._free:
            seq = self.waiting.popleft()
            seq.slot = heapq.heappop(self._free)
            self.running[seq.slot] = seq
            budget = self._chunk(seq, budget, plan, book)
        return plan, book

    def _chunk(self, seq: Sequence, budget: int, plan: StepPlan, book: Book) -> int:
        if budget <= 0:
            return budget
        count = min(len(seq.prompt) - seq.prefilled, budget)
        tokens = seq.prompt[seq.prefilled:seq.prefilled + count]
        sample = seq.prefilled + count == len(seq.prompt)
        plan.chunks.append(Chunk(seq.slot, seq.prefilled, tokens, sample))
        seq.prefilled += count
        if sample:
            seq.scheduled += 1
            book.sampled.append(seq)
        return budget - count

    def _retire(self) -> None:
        for slot, seq in list(self.running.items()):
            if seq.finish is not None or seq.fully_planned:
                del self.running[slot]
                heapq.heappush(self._free, slot)
        while self.waiting and self.waiting[0].finish is not None:
            self.waiting.popleft()
