"""Two Triton kernels for a decode step on the GPU: a matrix-vector product and the
rotate-and-store of a block's fused q|k|v projection.

* ``gemv`` — ``x @ w.T`` for one row of ``x`` (decode of one sequence). There cuBLAS's
  kernels read the narrower weights at 32-87 % of the copy bandwidth on an H200
  (benchmarks/gpu/RESULTS-gpu.md), and a decode step is those reads.
  Each program here streams ``BLOCK_N`` weight rows once, in ``BLOCK_K`` columns at a
  time, for every row of ``x``, accumulating in float32.
* ``rotate_store`` — what :func:`lmjupyter.generation.fused.split_rotate_store` does (split
  q|k|v, rotate q and k, write k and v into the slot cache at each token's slot and
  position, return q) in one kernel, where eager PyTorch runs about a dozen and
  inductor still three (the two cache writes stay index kernels): 1.7 us a layer
  against 13.8 eager on an H200.

Imported only on a CUDA device with Triton installed (``lmjupyter.generation.fused.Regions``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

# Where the GEMV beats cuBLAS, and with what tiles (benchmarks/gpu/gemv_bench.py on an H200, weights
# streamed from HBM as in a decode step, 2026-12-01): at one row, for the q|k|v, o and down projections
# of the 1.1B and 8B Llamas (1.1B: 5.1 / 4.4 / 8.1 us against cuBLAS's 6.3 / 6.2 / 11.2; 8B: 15.2 /
# 10.9 / 29.6 against 15.6 / 13.5 / 32.0); not for the wide gate|up (N 11264 and 28672: cuBLAS reads
# those at 80-99 % of the copy bandwidth, the GEMV at 78-98 %), nor at two or four rows (slower).
# One tile shape was within ~5 % of each shape's best, so there is one compile per process.
GEMV_MAX_ROWS = 1
GEMV_MAX_N = 8192
DEFAULT_CONFIG = (4, 2048, 4, 1)   # (BLOCK_N, BLOCK_K, num_warps, num_stages)


def gemv_pays(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether ``gemv(x, w)`` is the faster product (the measurements above)."""
    return x.numel() <= GEMV_MAX_ROWS * x.shape[-1] and w.shape[0] <= GEMV_MAX_N and w.is_contiguous()


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym,
                 M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)   # output features of this program
    rows = tl.arange(0, BLOCK_M)                                 # rows of x
    offs = tl.arange(0, BLOCK_K)
    col_ok = cols < N
    row_ok = rows < M
    acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs
        k_ok = ks < K
        w = tl.load(w_ptr + cols[:, None] * stride_wn + ks[None, :], mask=col_ok[:, None] & k_ok[None, :],
                    other=0.0, eviction_policy="evict_first")
        x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        acc += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    out = tl.sum(acc, axis=2)
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], out.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def gemv(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """``x @ w.T`` for x [..., K] with a few rows (any number works; see gemv_pays), w [N, K] contiguous."""
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n = x2.shape[0], w.shape[0]
    block_n, block_k, warps, stages = config or DEFAULT_CONFIG
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x2, w, y, n, k, x2.stride(0), w.stride(0), y.stride(0),
        M=m, BLOCK_M=triton.next_power_of_2(m), BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=warps, num_stages=stages)
    return y.view(*lead, n)


def rotate_store_fits(head_dim: int) -> bool:
    """Whether the kernel takes this head size (``tl.arange`` spans a power of two: half a head)."""
    half = head_dim // 2
    return half > 0 and half & (half - 1) == 0


@triton.jit
def _rotate_store_kernel(qkv_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, slots_ptr, pos_ptr,
                         stride_t, stride_rot, stride_cs, stride_ch, stride_cp,
                         Q_HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                         HALF: tl.constexpr, ROTATE: tl.constexpr):
    token = tl.program_id(0)
    head = tl.program_id(1)          # 0..Q-1: q heads; then k heads; then v heads
    lo = tl.arange(0, HALF)
    src = qkv_ptr + token * stride_t + head * HEAD_DIM
    x1 = tl.load(src + lo).to(tl.float32)
    x2 = tl.load(src + HALF + lo).to(tl.float32)
    y1 = x1
    y2 = x2
    if ROTATE:
        if head < Q_HEADS + KV_HEADS:
            c1 = tl.load(cos_ptr + token * stride_rot + lo).to(tl.float32)
            c2 = tl.load(cos_ptr + token * stride_rot + HALF + lo).to(tl.float32)
            s1 = tl.load(sin_ptr + token * stride_rot + lo).to(tl.float32)
            s2 = tl.load(sin_ptr + token * stride_rot + HALF + lo).to(tl.float32)
            y1 = x1 * c1 - x2 * s1
            y2 = x2 * c2 + x1 * s2
    out1 = y1.to(q_ptr.dtype.element_ty)
    out2 = y2.to(q_ptr.dtype.element_ty)
    if head < Q_HEADS:
        dst = q_ptr + (token * Q_HEADS + head) * HEAD_DIM
        tl.store(dst + lo, out1)
        tl.store(dst + HALF + lo, out2)
    else:
        row = tl.load(slots_ptr + token).to(tl.int64) * stride_cs + tl.load(pos_ptr + token).to(tl.int64) * stride_cp
        if head < Q_HEADS + KV_HEADS:
            dst = k_ptr + row + (head - Q_HEADS) * stride_ch
            tl.store(dst + lo, out1)
            tl.store(dst + HALF + lo, out2)
        else:
            dst = v_ptr + row + (head - Q_HEADS - KV_HEADS) * stride_ch
            tl.store(dst + lo, out1)
            tl.store(dst + HALF + lo, out2)


def rotate_store(qkv: torch.Tensor, cos, sin, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 write_slots: torch.Tensor, write_pos: torch.Tensor, q_heads: int, kv_heads: int,
                 head_dim: int) -> torch.Tensor:
    """:func:`lmjupyter.generation.fused.split_rotate_store` in one kernel (same arguments, same result
    up to rounding: the rotation is computed in float32 and rounded once)."""
    n, width = qkv.shape[:2]
    tokens = n * width
    flat = qkv.reshape(tokens, qkv.shape[-1])
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    q = torch.empty((n, width, q_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    rotate = cos is not None
    if rotate:
        cos, sin = cos.reshape(tokens, head_dim), sin.reshape(tokens, head_dim)
        cos, sin = cos.contiguous(), sin.contiguous()
    else:
        cos = sin = flat   # not read
    _rotate_store_kernel[(tokens, q_heads + 2 * kv_heads)](
        flat, cos, sin, q, k_cache, v_cache, write_slots, write_pos,
        flat.stride(0), cos.stride(0) if rotate else 0, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        Q_HEADS=q_heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim, HALF=head_dim // 2, ROTATE=rotate,
        num_warps=1)
    return q


def self_check(device, dtype, q_heads: int, kv_heads: int, head_dim: int, rotary: bool = True) -> str | None:
    """Compile and run both kernels once, for this model's head layout, against their PyTorch forms.

    Returns why they cannot be used (Triton needs a C compiler and a writable cache, for one), or
    None. Run before serving, so that a deploy does not find out at its first request, and so that
    the compile is paid while the worker starts rather than by that request.
    """
    from lmjupyter.generation.fused import split_rotate_store

    try:
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(1, 1, 256, device=device, dtype=dtype, generator=gen)
        w = torch.randn(80, 256, device=device, dtype=dtype, generator=gen) * 0.05
        reference = F.linear(x.float(), w.float())
        if (gemv(x, w).float() - reference).abs().max() > 1e-2 * reference.abs().max() + 1e-3:
            return "the Triton GEMV gave a wrong answer in its self-check"
        if not rotate_store_fits(head_dim):
            return None   # the decoder keeps PyTorch's rotate-and-store for this head size (fused.Regions)
        width = (q_heads + 2 * kv_heads) * head_dim
        qkv = torch.randn(2, 1, width, device=device, dtype=dtype, generator=gen)
        angles = torch.rand(2, 1, 1, head_dim, device=device, generator=gen)
        cos, sin = (angles.cos().to(dtype), angles.sin().to(dtype)) if rotary else (None, None)
        slots, pos = torch.tensor([0, 1], device=device), torch.tensor([3, 5], device=device)
        caches = [[torch.zeros(3, kv_heads, 8, head_dim, device=device, dtype=dtype) for _ in range(2)]
                  for _ in range(2)]
        q_ref = split_rotate_store(qkv, cos, sin, *caches[0], slots, pos, q_heads, kv_heads, head_dim)
        q_got = rotate_store(qkv, cos, sin, *caches[1], slots, pos, q_heads, kv_heads, head_dim)
        pairs = [(q_got, q_ref), *zip(caches[1], caches[0])]
        if any((a.float() - b.float()).abs().max() > 0.05 for a, b in pairs):
            return "the Triton rotate-and-store gave a wrong answer in its self-check"
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - any failure means: use PyTorch's kernels
        return f"the Triton kernels failed their self-check: {type(exc).__name__}: {str(exc)[:300]}"
    return None
