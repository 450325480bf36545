"""The leader rank's side of continuous batching: requests in, plans out, tokens back to clients.

The leader is the decider rank (it holds the logits). Each :meth:`Leader.step`

1. plans the next step (scheduler) and broadcasts the plan to the other ranks;
2. launches it on the device (executor) and starts copying its tokens back;
3. only then reads the *previous* step's tokens, so the device computes step N+1
   while the host detokenizes and streams step N.

What it returns are events for the server: ``("partial", rid, answer)`` for
streams, ``("done", rid, answer)`` once a request has ended, ``answer`` being the
codec's (status, content type, body).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from lmjupyter.generation.detok import IncrementalText
from lmjupyter.generation.executor import StepExecutor, StepOutput
from lmjupyter.generation.params import ParsedRequest, RequestError, parse_request
from lmjupyter.generation.plan import IDLE, RUN, STOP, StepPlan, decode, encode, plan_size
from lmjupyter.generation.sampler import request_key
from lmjupyter.generation.scheduler import Book, Scheduler, Sequence
from lmjupyter.worker.codec import encode_answer


class PlanChannel:
    """The plan broadcast from the leader to the other ranks (nothing to do for one rank)."""

    def __init__(self, world: int, leader: int, slots: int, prefill_budget: int):
        self.world, self.leader = world, leader
        self.buffer = torch.zeros(plan_size(slots, prefill_budget), dtype=torch.int64)

    def send(self, plan: StepPlan) -> None:
        if self.world > 1:
            dist.broadcast(encode(plan, self.buffer), src=self.leader)

    def receive(self) -> StepPlan:
        dist.broadcast(self.buffer, src=self.leader)
        return decode(self.buffer)


def follow(executor: StepExecutor, plans: PlanChannel) -> None:
    """A rank that is not the leader: run every plan until the leader says stop."""
    while True:
        plan = plans.receive()
        if plan.kind == STOP:
            return
        if plan.kind == RUN:
            executor.run(plan)


class Leader:
    def __init__(self, executor: StepExecutor, plans: PlanChannel, scheduler: Scheduler, tokenizer,
                 eos_ids: set[int], default_max_new_tokens: int, max_length: int | None = None):
        self.executor, self.plans, self.scheduler = executor, plans, scheduler
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        self.default_max_new_tokens, self.max_length = default_max_new_tokens, max_length
        self.sequences: dict[int, Sequence] = {}
        self._pending: tuple[StepOutput, Book, int | None] | None = None
        self.generated_total = 0

    # ---- requests ------------------------------------------------------------------------
    def add(self, rid: int, item, stream: bool) -> list[tuple]:
        """Take a decoded request; a bad one is answered at once (400), the rest wait for a slot."""
        try:
            parsed = parse_request(item, self.tokenizer, default_max_new_tokens=self.default_max_new_tokens,
                                   max_length=self.max_length)
            seq = self._sequence(rid, parsed, stream)
        except RequestError as exc:
            return [("done", rid, encode_answer(exc))]
        if seq.params.max_new_tokens == 0:
            seq.finish = "length"
            return [("done", rid, self._answer(seq, ""))]
        self.sequences[rid] = seq
        self.scheduler.add(seq)
        return []

    def _sequence(self, rid: int, parsed: ParsedRequest, stream: bool) -> Sequence:
        limit = self.scheduler.max_len
        if len(parsed.prompt_ids) >= limit:
            raise RequestError(f"the prompt has {len(parsed.prompt_ids)} tokens; this worker's limit is "
                               f"{limit - 1} prompt tokens (handler.max_seq_len {limit})", param="prompt")
        params = parsed.params
        room = limit - len(parsed.prompt_ids)
        if params.max_new_tokens > room:   # as generate does at the model's length: stop there ("length")
            from dataclasses import replace
            params = replace(params, max_new_tokens=room)
        return Sequence(rid, parsed.prompt_ids, params, stream, request_key(params.seed),
                        IncrementalText(self.tokenizer, params.stop))

    def cancel(self, rid: int) -> list[tuple]:
        seq = self.sequences.pop(rid, None)
        if seq is None or seq.finish is not None:
            return []
        self.scheduler.cancel(seq)
        return [("done", rid, (499, "application/json", b'{"error": {"message": "cancelled by the client"}}'))]

    @property
    def busy(self) -> bool:
        return self._pending is not None or self.scheduler.has_work

    # ---- steps ----------------------------------------------------------------------------
    def step(self) -> list[tuple]:
        """Plan and launch one step, then read the step before it."""
        plan, book = self.scheduler.plan()
        launched = None
        if not plan.empty:
            self._settle_slots(book)
            self.plans.send(plan)
            top = self._logprobs_wanted(book)
            output = self.executor.run(plan, top)
            output.start_copy(self.executor.host_buffers)
            launched = (output, book, top)
        previous, self._pending = self._pending, launched
        return self._read(*previous) if previous is not None else []

    def _settle_slots(self, book: Book) -> None:
        """The sampler's settings per slot: new sequences' in, retired ones' out (a free slot inside
        the decode rows then samples greedily, which costs nothing)."""
        settings = self.executor.slot_settings
        for seq in book.sampled:
            settings[seq.slot] = (seq.rid, seq.params, seq.key)
        for slot in [s for s in settings if s not in self.scheduler.running]:
            del settings[slot]

    def _logprobs_wanted(self, book: Book) -> int | None:
        wanted = [s.params.logprobs for s in book.sampled] + [s.params.logprobs for _, s in book.decode]
        wanted = [w for w in wanted if w is not None]
        return max(wanted) if wanted else None

    def fail_all(self, exc: BaseException) -> list[tuple]:
        """A step raised: every request this worker holds ends with the reason, and planning starts afresh
        (an out-of-memory error answers 503, anything else 500)."""
        status = 503 if isinstance(exc, torch.OutOfMemoryError) else 500
        error = RequestError(f"generation step failed: {type(exc).__name__}: {exc}")
        answer = encode_answer(error)
        answer = (status, answer[1], answer[2])
        events = [("done", rid, answer) for rid in self.sequences]
        self.sequences.clear()
        self._pending = None
        self.scheduler = Scheduler(self.scheduler.slots, self.scheduler.max_len, self.scheduler.prefill_budget,
                                   self.scheduler.min_length)
        self.executor.slot_settings.clear()
        return events

    def heartbeat(self) -> None:
        """Idle: tell the other ranks so that their wait for a plan never reaches the group timeout."""
        self.plans.send(StepPlan(kind=IDLE))

    def stop(self) -> None:
        self.plans.send(StepPlan(kind=STOP))

    # ---- results --------------------------------------------------------------------------
    def _read(self, output: StepOutput, book: Book, top: int | None) -> list[tuple]:
        output.fetch()
        events: list[tuple] = []
        if book.sampled:
            tokens = output.first.tolist()
            for i, seq in enumerate(book.sampled):
                self._accept(seq, tokens[i], output.logprobs.get("first"), i, events)
        if book.decode:
            tokens = output.decode.tolist()
            for slot, seq in book.decode:
                self._accept(seq, tokens[slot], output.logprobs.get("decode"), slot, events)
        return events

    def _accept(self, seq: Sequence, token: int, logprobs, row: int, events: list) -> None:
        if seq.finish is not None:
            return  # ended (eos, stop, cancel) while this step was already running
        seq.tokens.append(token)
        self.generated_total += 1
        if logprobs is not None and seq.params.logprobs is not None:
            seq.logprobs.append(_logprob_entry(logprobs, row, token, seq.params.logprobs))
        if token in self.eos_ids and not seq.params.ignore_eos:
            piece, seq.finish = seq.text.finish(), "stop"
        else:
            piece = seq.text.add(token)
            if seq.text.stopped:
                seq.finish = "stop"
            elif len(seq.tokens) >= seq.params.max_new_tokens:
                piece, seq.finish = piece + seq.text.finish(), "length"
        if seq.stream:
            partial = {"token_id": token, "text": piece}
            if seq.logprobs and logprobs is not None:
                partial["logprob"] = seq.logprobs[-1]
            events.append(("partial", seq.rid, encode_answer(partial)))
        if seq.finish is not None:
            self.sequences.pop(seq.rid, None)
            events.append(("done", seq.rid, self._answer(seq, seq.text.text)))

    def _answer(self, seq: Sequence, text: str):
        answer = {"text": text, "token_ids": seq.tokens, "finish_reason": seq.finish,
                  "prompt_tokens": len(seq.prompt), "completion_tokens": len(seq.tokens)}
        if seq.params.logprobs is not None:
            answer["logprobs"] = seq.logprobs
        return encode_answer(answer)


def _logprob_entry(logprobs, row: int, token: int, top: int) -> dict:
    chosen, ids, values = logprobs
    entry = {"token_id": token, "logprob": float(chosen[row])}
    if top and ids is not None:
        entry["top"] = [[int(i), float(v)] for i, v in zip(ids[row, :top].tolist(), values[row, :top].tolist())]
    return entry
