"""One CUDA graph per decode bucket (rows, length), captured the first time the bucket is used.

An eager decode step of a small model is hundreds of kernel launches, and on a
GPU their launch cost is most of the step. The decode call reads only device
buffers (tokens, positions, the cache), so it can be captured once per bucket
and replayed: the replay costs one launch. Capturing writes key/values at each
row's current position, which is harmless (that position is rewritten before it
is ever read: see cache.py). Graphs share one memory pool. Capture time is
recorded per bucket (``captured``) so that start-up reports can show it.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict

import torch

log = logging.getLogger(__name__)


class DecodeGraphs:
    def __init__(self, forward, max_graphs: int = 48):
        self.forward = forward               # forward(rows, length) -> logits, reading device buffers only
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = OrderedDict()
        self._pool = None
        self.captured: dict[tuple[int, int], float] = {}   # bucket -> seconds its capture took
        self.failed: str | None = None

    def run(self, rows: int, length: int) -> torch.Tensor:
        if self.failed is not None:
            return self.forward(rows, length)
        key = (rows, length)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(rows, length)
            except Exception as exc:  # noqa: BLE001 - say so once, decode eagerly from then on
                self.failed = f"{type(exc).__name__}: {exc}"
                log.warning("CUDA graph capture failed (%s); decoding without graphs", self.failed)
                print(f"lmjupyter: CUDA graph capture failed ({self.failed}); decoding without graphs", flush=True)
                torch.cuda.synchronize()
                return self.forward(rows, length)
        else:
            self._graphs.move_to_end(key)
        graph, output = entry
        graph.replay()
        return output

    def _capture(self, rows: int, length: int):
        started = time.perf_counter()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):   # warm-up: lazy initialisation must not happen during capture
                self.forward(rows, length)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.forward(rows, length)
        self._graphs[(rows, length)] = (graph, output)
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        self.captured[(rows, length)] = time.perf_counter() - started
        return graph, output
