"""Host values of a step (prefill inputs, positions, masks) moved to the device without blocking.

A plain ``torch.tensor(values, device="cuda")`` copies from pageable memory, which
makes the host wait until the device has finished everything queued before the
copy: with one step always queued ahead, that would cost a whole step. Here the
values are packed into pinned host memory and copied asynchronously, in stream
order, into a device buffer. A ring of pinned buffers is reused; each waits for
its previous copy's event before being overwritten (in practice long done).
"""
from __future__ import annotations

import torch

RING = 4


class Staging:
    def __init__(self, device, size: int = 1 << 16):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.size = size
        self._host = [torch.empty(size, dtype=torch.long, pin_memory=self.cuda) for _ in range(RING)] \
            if self.cuda else []
        self._events: list = [None] * RING
        self._turn = 0

    def put(self, *arrays: list[int]) -> list[torch.Tensor]:
        """Each list of ints as an int64 tensor on the device (one copy for all of them)."""
        total = sum(len(a) for a in arrays)
        if not self.cuda:
            flat = torch.tensor([v for a in arrays for v in a], dtype=torch.long)
        else:
            if total > self.size:
                self._grow(total)
            self._turn = (self._turn + 1) % RING
            if self._events[self._turn] is not None:
                self._events[self._turn].synchronize()
            host = self._host[self._turn][:total]
            host.copy_(torch.tensor([v for a in arrays for v in a], dtype=torch.long))
            flat = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._events[self._turn] = event
        out, offset = [], 0
        for a in arrays:
            out.append(flat[offset:offset + len(a)])
            offset += len(a)
        return out

    def _grow(self, total: int) -> None:
        torch.cuda.synchronize(self.device)
        self.size = max(total, 2 * self.size)
        self._host = [torch.empty(self.size, dtype=torch.long, pin_memory=True) for _ in range(RING)]
        self._events = [None] * RING
