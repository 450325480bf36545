"""The elementwise pieces of a decoder block, as functions that ``torch.compile`` can fuse.

Between its matmuls a block does small elementwise work — the residual add and the
next norm, the rotary rotation of q and k, the gated activation — which eager
PyTorch runs as a dozen kernels of a few microseconds each; at batch 1 on a GPU
those kernels, not the weight reads, are most of a decode step. Each function here
is one region: eager, it is the same kernels as before; compiled (``handler.compile``,
inductor, shapes dynamic), it is one generated kernel. Only these regions are
compiled, not the model: they compile in seconds (in a background thread by
default on one GPU), and the matmuls, the cache writes and the collectives stay
plain PyTorch.
"""
from __future__ import annotations

import threading
import time

import torch
import torch.nn.functional as F


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def split_rotate(qkv: torch.Tensor, cos, sin, q_heads: int, kv_heads: int, head_dim: int):
    """q (contiguous), k, v of a fused projection [n, T, (q + 2 kv) * d], q and k rotated (llama)."""
    n, width = qkv.shape[:2]
    qk, v = qkv.split([(q_heads + kv_heads) * head_dim, kv_heads * head_dim], dim=-1)
    qk = qk.view(n, width, q_heads + kv_heads, head_dim)
    if cos is not None:   # q and k heads side by side: one rotation for both
        qk = qk * cos + rotate_half(qk) * sin
    q, k = qk.split([q_heads, kv_heads], dim=2)
    return q.contiguous(), k, v.view(n, width, kv_heads, head_dim)


def add_norm(x: torch.Tensor, delta: torch.Tensor, delta_bias, weight, bias, eps: float, rms: bool):
    """The residual add (plus a row-parallel layer's bias), then the next norm: (new x, its norm)."""
    x = x + delta if delta_bias is None else x + delta + delta_bias
    return x, norm(x, weight, bias, eps, rms)


def norm(x: torch.Tensor, weight, bias, eps: float, rms: bool) -> torch.Tensor:
    if rms:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def activate(up: torch.Tensor, gated: bool) -> torch.Tensor:
    """SwiGLU of a fused gate|up projection (llama), or GPT-2's tanh GELU."""
    if gated:
        gate, value = up.chunk(2, dim=-1)
        return F.silu(gate) * value
    return F.gelu(up, approximate="tanh")


class Regions:
    """The functions a decoder calls, plain or compiled (once each, shapes dynamic).

    ``mode``: ``"off"``; ``"now"`` (compiled from the start: the first requests pay for the
    compile); ``"background"`` (plain until a thread has compiled them on dummy inputs, then
    :meth:`switch_if_ready` swaps them in between two steps, so that no request waits for
    the compiler). Background compiling is for one-rank workers: the ranks of a group would
    have to switch at the same step.
    """

    def __init__(self, mode: str = "off"):
        if mode not in ("off", "now", "background"):
            raise ValueError(f"handler.compile = {mode!r}: expected true, false or background")
        self.mode = mode
        plain = (split_rotate, add_norm, activate)
        self._compiled = tuple(torch.compile(fn, dynamic=True) for fn in plain) if mode != "off" else None
        self.norm = norm
        self._use(plain if mode != "now" else self._compiled)
        self.compiled = mode == "now"
        self.ready = threading.Event()
        self.error: str | None = None
        self.compile_s: float | None = None

    def _use(self, functions) -> None:
        self.split_rotate, self.add_norm, self.activate = functions

    def compile_in_background(self, examples) -> None:
        """Compile on ``examples()`` — (function index, args) pairs — in a daemon thread, on a stream
        of its own, so that the serving thread's kernels and graph captures are not disturbed."""
        def work():
            started = time.perf_counter()
            try:
                with torch.no_grad(), torch.cuda.stream(torch.cuda.Stream()):
                    for index, args in examples():
                        self._compiled[index](*args)
                    torch.cuda.current_stream().synchronize()
                self.compile_s = time.perf_counter() - started
            except Exception as exc:  # noqa: BLE001 - the plain regions keep serving
                self.error = f"{type(exc).__name__}: {exc}"
            self.ready.set()

        threading.Thread(target=work, name="lmjupyter-compile", daemon=True).start()

    def switch_if_ready(self) -> bool:
        """Swap in the compiled regions once the background compile is done (True when it happened)."""
        if self.mode != "background" or self.compiled or not self.ready.is_set():
            return False
        if self.error is not None:
            print(f"lmjupyter: compiling the decoder's regions failed ({self.error}); they stay plain", flush=True)
            self.mode = "off"
            return False
        self._use(self._compiled)
        self.compiled = True
        print(f"lmjupyter: decoder regions compiled in {self.compile_s:.1f}s (in the background); now in use",
              flush=True)
        return True
