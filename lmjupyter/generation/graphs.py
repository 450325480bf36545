"""One CUDA graph per bucket, captured the first time the bucket is used.

An eager step of a small model is hundreds of kernel launches, and on a GPU their
launch cost (host time per op) is most of the step. A decode call (bucket: rows,
length) reads only device buffers — tokens, positions, the cache — and a prefill
call (bucket: rows, width, length) reads its bucket's fixed input buffers, so each
can be captured once and replayed for the cost of one launch. The warm-up before a
capture runs the call for real, which is harmless: decode writes at each row's next
position, which is rewritten before it is read (cache.py), and prefill writes the
same keys/values that its replay writes again. Graphs share one
memory pool. Capture time is recorded per bucket (``captured``) for start-up reports.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict

import torch

log = logging.getLogger(__name__)


class BucketGraphs:
    def __init__(self, forward, max_graphs: int = 48):
        self.forward = forward               # forward(*bucket) -> output, reading fixed device buffers only
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = OrderedDict()
        self._pool = None
        self.captured: dict[tuple[int, int], float] = {}   # bucket -> seconds its capture took
        self.failed: str | None = None

    def run(self, *key: int) -> torch.Tensor:
        if self.failed is not None:
            return self.forward(*key)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(key)
            except Exception as exc:  # noqa: BLE001 - say so once, decode eagerly from then on
                self.failed = f"{type(exc).__name__}: {exc}"
                log.warning("CUDA graph capture failed (%s); decoding without graphs", self.failed)
                print(f"lmjupyter: CUDA graph capture failed ({self.failed}); decoding without graphs", flush=True)
                torch.cuda.synchronize()
                return self.forward(*key)
        else:
            self._graphs.move_to_end(key)
        graph, output = entry
        graph.replay()
        return output

    def _capture(self, key: tuple):
        started = time.perf_counter()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):   # warm-up: lazy initialisation must not happen during capture
                self.forward(*key)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.forward(*key)
        self._graphs[key] = (graph, output)
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        self.captured[key] = time.perf_counter() - started
        return graph, output
