"""GPU discovery and the seed's round-robin assignment of GPUs to workers.

Each worker gets ``nproc-per-node`` GPUs taken round-robin from ``deviceIds``
(or all GPUs): 8 GPUs, nproc 4, 2 workers -> "0,1,2,3" and "4,5,6,7";
``deviceIds: [2,3,4,5]``, nproc 2 -> "2,3" and "4,5". A GPU held by any worker
(of this model or another) is skipped; when too few are free the request is
refused with the holders named, never queued.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field


class GpuAllocationError(ValueError):
    """Not enough free GPUs for a worker; the message names who holds them."""


def parse_gpu_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; '' -> [] (a machine with no GPUs)."""
    text = text.strip()
    if not text:
        return []
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"GPU list {text!r}: expected comma-separated integer ids like 0,1,2") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"GPU list {text!r}: expected distinct ids >= 0")
    return ids


def discover_gpus(override: str | None = None) -> list[int]:
    """GPU ids: the override (``--gpus`` / ``LMJUPYTER_GPUS``), else nvidia-smi, else none."""
    if override is None:
        override = os.environ.get("LMJUPYTER_GPUS")
    if override is not None:
        return parse_gpu_list(override)
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(line) for line in out.split() if line.strip().isdigit()]


@dataclass(frozen=True)
class Holder:
    model: str
    worker: int

    def __str__(self) -> str:
        return f"{self.model} worker {self.worker}"


@dataclass
class GpuAllocator:
    """Tracks which worker holds which GPU, across all models of one server."""

    gpus: list[int]
    held: dict[int, Holder] = field(default_factory=dict)

    def plan(self, model: str, worker_ids: list[int], nproc: int, device_ids: list[int] | None,
             start: int = 0) -> dict[int, list[int]]:
        """GPUs for each new worker, without reserving them. Raises GpuAllocationError."""
        pool = list(device_ids) if device_ids is not None else list(self.gpus)
        unknown = [g for g in pool if g not in self.gpus]
        if unknown:
            known = ",".join(map(str, self.gpus)) or "none"
            raise GpuAllocationError(f"deviceIds {unknown} do not exist on this server (GPUs: {known})")
        taken = dict(self.held)
        plan: dict[int, list[int]] = {}
        cursor = start
        for worker in worker_ids:
            chosen: list[int] = []
            for step in range(len(pool)):
                gpu = pool[(cursor + step) % len(pool)] if pool else None
                if gpu is not None and gpu not in taken:
                    chosen.append(gpu)
                    if len(chosen) == nproc:
                        cursor = (cursor + step + 1)
                        break
            if len(chosen) < nproc:
                raise GpuAllocationError(self._shortage(model, worker, nproc, pool, taken))
            for gpu in chosen:
                taken[gpu] = Holder(model, worker)
            plan[worker] = chosen
        return plan

    def reserve(self, model: str, plan: dict[int, list[int]]) -> None:
        for worker, gpus in plan.items():
            for gpu in gpus:
                self.held[gpu] = Holder(model, worker)

    def release(self, model: str, worker: int | None = None) -> None:
        for gpu, holder in list(self.held.items()):
            if holder.model == model and (worker is None or holder.worker == worker):
                del self.held[gpu]

    def describe(self) -> list[dict]:
        return [{"id": gpu, "holder": ({"model": h.model, "worker": h.worker} if (h := self.held.get(gpu)) else None)}
                for gpu in self.gpus]

    @staticmethod
    def _shortage(model: str, worker: int, nproc: int, pool: list[int], taken: dict[int, Holder]) -> str:
        if not pool:
            return (f"{model} worker {worker} needs {nproc} GPU(s) but this server has none; "
                    "use deviceType: cpu, or --gpus / LMJUPYTER_GPUS to name GPU ids")
        free = [g for g in pool if g not in taken]
        holders = ", ".join(f"GPU {g}: {taken[g]}" for g in pool if g in taken)
        return (f"{model} worker {worker} needs {nproc} GPU(s) but only {len(free)} of {pool} "
                f"{'is' if len(free) == 1 else 'are'} free" + (f" (held: {holders})" if holders else ""))
