"""The elementwise pieces of a decoder block, as functions that ``torch.compile`` can fuse.

Between its matmuls a block does small elementwise work — the residual add and the
next norm, the rotary rotation of q and k and their store into the KV cache, the
gated activation — which eager
PyTorch runs as a dozen kernels of a few microseconds each; at batch 1 on a GPU
those kernels, not the weight reads, are most of a decode step. Each function here
is one region: eager, it is the same kernels as before; compiled (``handler.compile``,
inductor, shapes dynamic), it is one generated kernel. Only these regions are
compiled, not the model: they compile in seconds, and the matmuls and the
collectives stay plain PyTorch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def split_rotate_store(qkv: torch.Tensor, cos, sin, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       write_slots: torch.Tensor, write_pos: torch.Tensor, q_heads: int, kv_heads: int,
                       head_dim: int) -> torch.Tensor:
    """Split a fused projection [n, T, (q + 2 kv) * d], rotate q and k (llama), write k and v into the
    cache at (write_slots, write_pos) (flat, one per token), and return q, contiguous [n, T, q, d].
    Compiled, this is one kernel that writes the cache rows in place."""
    n, width = qkv.shape[:2]
    qk, v = qkv.split([(q_heads + kv_heads) * head_dim, kv_heads * head_dim], dim=-1)
    qk = qk.view(n, width, q_heads + kv_heads, head_dim)
    if cos is not None:   # q and k heads side by side: one rotation for both
        qk = qk * cos + rotate_half(qk) * sin
    q, k = qk.split([q_heads, kv_heads], dim=2)
    k_cache[write_slots, :, write_pos] = k.reshape(n * width, kv_heads, head_dim)
    v_cache[write_slots, :, write_pos] = v.reshape(n * width, kv_heads, head_dim)
    return q.contiguous()


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


def kernels_unavailable(device, dtype) -> str | None:
    """Why the Triton kernels (``handler.kernels``) cannot run here; None where they can."""
    if torch.device(device).type != "cuda":
        return "the Triton kernels run on CUDA devices only"
    if dtype not in (torch.bfloat16, torch.float16):
        return "the Triton kernels are for bfloat16 and float16 (float32 keeps cuBLAS, for exact parity)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return None


class Regions:
    """The functions a decoder calls: plain, or compiled once each (shapes dynamic), with Triton's
    kernels for the few-row matmuls and the rotate-and-store where they run (``kernels``).

    Compiled (``handler.compile: true``), the first requests pay for the compile (6-11 s on an
    H200 for the 1.1B and 8B shapes; less with inductor's cache warm). Compiling in a thread
    while serving was tried and dropped: its CUDA work invalidated the serving thread's graph
    captures (benchmarks/gpu/RESULTS-gpu.md).
    """

    def __init__(self, compile: bool = False, triton: bool = False):
        wrap = (lambda fn: torch.compile(fn, dynamic=True)) if compile else (lambda fn: fn)
        self.split_rotate_store = wrap(split_rotate_store)
        self.add_norm = wrap(add_norm)
        self.activate = wrap(activate)
        self.norm = norm
        self.linear = F.linear
        self.compiled, self.triton = compile, triton
        if triton:
            from lmjupyter.generation import triton_kernels

            self._kernels = triton_kernels
            self._torch_store = self.split_rotate_store
            self.linear = self._linear
            self.split_rotate_store = self._rotate_store

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b=None) -> torch.Tensor:
        if b is None and self._kernels.gemv_pays(x, w):
            return self._kernels.gemv(x, w)
        return F.linear(x, w, b)

    def _rotate_store(self, qkv, cos, sin, k_cache, v_cache, write_slots, write_pos, q_heads, kv_heads, head_dim):
        if not (self._kernels.rotate_store_fits(head_dim) and k_cache.is_contiguous()):
            return self._torch_store(qkv, cos, sin, k_cache, v_cache, write_slots, write_pos, q_heads, kv_heads,
                                     head_dim)
        return self._kernels.rotate_store(qkv, cos, sin, k_cache, v_cache, write_slots, write_pos, q_heads,
                                          kv_heads, head_dim)
