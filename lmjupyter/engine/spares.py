"""Warm spare worker groups: ``lmjupyter serve --warm-spares N``.

A cold worker start spends most of its time importing torch, once in torchrun's agent and
once in every rank (about 1.3 s on the 2-core CI machines, before the handler loads). A
spare is a torchrun group started ahead of time whose ranks have imported torch and wait
on their socket for a handler spec. A worker start whose torchrun arguments and whole
environment (nproc, CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, PYTHONPATH, ...) equal a
spare's takes it over (:meth:`WorkerGroup._take_over`): the ranks get the spec, load the
handler and say ready, as after a cold start but without the imports.

The pool holds N spares shaped like the last N worker starts (deploys, scale-ups and
restarts; at first, N of the shape a plain deploy gets: one rank, on CPU or the first
GPU): deploying one 2-rank model after another keeps 2-rank spares, 4 workers started
at once leave 4 spares for the next 4. Spares start only while no worker group is
starting, so that they never compete for the CPU with a deploy; a spare taken is
replaced the same way, and spares of shapes no longer wanted are stopped. Spares hold no GPU memory (CUDA is not initialised before
the spec arrives) and no GPU in the allocator, but each rank holds torch's memory
(about 250 MB RSS on CPU). Every spare process ends on shutdown.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Callable

from lmjupyter.engine.states import WorkerState
from lmjupyter.engine.worker_group import WorkerGroup, WorkerSpec

SPARE_STARTUP_TIMEOUT = 300.0


class SparePool:
    def __init__(self, size: int, run_dir: str, on_change: Callable[[], None] = lambda: None):
        self.size = size
        self.run_dir = run_dir
        self.spares: list[WorkerGroup] = []
        self.taken = 0            # worker starts served by a spare (shown by health)
        self._recent: list[WorkerSpec] = []  # the last ``size`` worker starts, newest first
        self._starting = 0        # worker groups of models starting now
        self._count = 0
        self._failed: set[tuple] = set()  # shapes whose spare could not start: not retried until used again
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self._on_change = on_change

    # ---- what worker starts call ----------------------------------------------------------------
    def take(self, spec: WorkerSpec) -> WorkerGroup | None:
        """A live spare started exactly like ``spec`` would start, removed from the pool; or None."""
        key = spec.spare_key
        for spare in self.spares:
            if (spare.spec.spare_key == key and spare.state in (WorkerState.STARTING, WorkerState.READY)
                    and spare.process is not None and spare.process.returncode is None):
                self.spares.remove(spare)
                self.taken += 1
                return spare
        return None

    def group_starting(self) -> None:
        self._starting += 1

    def group_started(self, spec: WorkerSpec) -> None:
        """A worker start ended (ready or failed): remember its shape and top the pool up when idle."""
        self._starting -= 1
        self.remember(spec)

    def remember(self, spec: WorkerSpec, times: int = 1) -> None:
        self._failed.discard(spec.spare_key)
        self._recent = ([spec] * times + self._recent)[:self.size]
        self.top_up()

    # ---- keeping N spares ------------------------------------------------------------------------
    def top_up(self) -> None:
        """Start the spares that the recent worker starts call for, stop those no longer wanted."""
        if self._closed or self._starting:
            return
        wanted = [s for s in self._recent if s.spare_key not in self._failed]
        unmatched = list(self.spares)
        for template in wanted:
            match = next((s for s in unmatched if s.spec.spare_key == template.spare_key), None)
            if match is not None:
                unmatched.remove(match)
            else:
                self._launch(template)
        for spare in unmatched:
            self.spares.remove(spare)
            self._spawn(spare.stop())
        self._on_change()

    def _launch(self, template: WorkerSpec) -> None:
        self._count += 1
        spec = dataclasses.replace(
            template, model_name="spare", worker_id=self._count, handler="", model_dir="", config={},
            manifest={}, log_dir=os.path.join(self.run_dir, "logs", ".spares", f"s{self._count}"),
            startup_timeout=SPARE_STARTUP_TIMEOUT, spares=None, spare=True, events=None)
        spare = WorkerGroup(spec, on_batch_done=lambda group: None, on_broken=self._broken)
        self.spares.append(spare)
        self._spawn(self._start(spare))

    async def _start(self, spare: WorkerGroup) -> None:
        try:
            await spare.start()
        except Exception:  # WorkerStartError; the group has killed its processes
            if spare in self.spares:
                self.spares.remove(spare)
                self._failed.add(spare.spec.spare_key)
        self._on_change()

    def _broken(self, spare: WorkerGroup, reason: str) -> None:
        """A ready spare's torchrun or rank died (already killed): forget it, start another."""
        if spare in self.spares:
            self.spares.remove(spare)
            self.top_up()

    # ---- the end ---------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Every spare process ends."""
        self._closed = True
        spares, self.spares = list(self.spares), []
        await asyncio.gather(*(s.stop() for s in spares), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    def describe(self) -> dict:
        return {"size": self.size, "taken": self.taken,
                "spares": [{"state": "ready" if s.state == WorkerState.READY else "starting",
                            "nproc": s.spec.nproc, "devices": s.spec.devices,
                            "pids": [link.pid for link in s.ranks.values()],
                            "torchrun_pid": s.process.pid if s.process else None}
                           for s in self.spares]}

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
