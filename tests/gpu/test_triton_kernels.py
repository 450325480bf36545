"""The Triton kernels of the decode step against the PyTorch they replace, on the GPU.

(On a machine without a GPU the same kernels can be run by Triton's interpreter:
``TRITON_INTERPRET=1`` with triton installed, on CPU tensors; CI does not install triton.)
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

DEV = "cuda:0"


@pytest.fixture(scope="module")
def kernels():
    return pytest.importorskip("lmjupyter.generation.triton_kernels")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", [(2560, 2048), (2048, 5632), (1000, 3000), (320, 2048)])
def test_gemv_equals_linear_for_one_to_four_rows(kernels, n, k, dtype):
    torch.manual_seed(n + k)
    w = (torch.randn(n, k, device=DEV) * 0.02).to(dtype)
    for rows in range(1, 5):
        x = torch.randn(rows, 1, k, device=DEV).to(dtype)
        reference = F.linear(x.float(), w.float())
        for config in (None, (4, 256, 4, 1), (16, 1024, 8, 3)):
            got = kernels.gemv(x, w, config)
            assert got.shape == (rows, 1, n) and got.dtype == dtype
            error = (got.float() - reference).abs().max() / reference.abs().max()
            assert error < 1e-2, (rows, config, float(error))


@pytest.mark.parametrize("rotary", [True, False])
@pytest.mark.parametrize("rows,width", [(1, 1), (16, 1), (3, 7)])
def test_rotate_store_equals_split_rotate_store(kernels, rotary, rows, width):
    from lmjupyter.generation.fused import split_rotate_store

    q_heads, kv_heads, d, slots, max_len = 32, 4, 64, 20, 128
    torch.manual_seed(rows * width)
    qkv = torch.randn(rows, width, (q_heads + 2 * kv_heads) * d, device=DEV, dtype=torch.bfloat16)
    cos = sin = None
    if rotary:
        angles = torch.rand(rows, width, 1, d, device=DEV) * 6
        cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()
    caches = [[torch.zeros(slots + 1, kv_heads, max_len, d, device=DEV, dtype=torch.bfloat16) for _ in range(2)]
              for _ in range(2)]
    write_slots = torch.randint(0, slots + 1, (rows * width,), device=DEV)
    write_pos = torch.randperm(max_len, device=DEV)[:rows * width]
    q_ref = split_rotate_store(qkv, cos, sin, *caches[0], write_slots, write_pos, q_heads, kv_heads, d)
    q_got = kernels.rotate_store(qkv, cos, sin, *caches[1], write_slots, write_pos, q_heads, kv_heads, d)
    # eager rounds each product to bf16, the kernel once: within a few bf16 steps of values ~4
    tolerance = 0.05 if rotary else 0.0
    assert q_got.shape == q_ref.shape and (q_got.float() - q_ref.float()).abs().max() <= tolerance
    written = torch.zeros(slots + 1, max_len, dtype=torch.bool, device=DEV)
    written[write_slots, write_pos] = True
    for ours, theirs in zip(caches[1], caches[0]):
        assert (ours.float() - theirs.float()).abs().max() <= tolerance
        rows_of = ours.transpose(1, 2)                       # [slot, position, kv head, d]
        assert not rows_of[~written].any()                   # nothing written outside those rows
        assert rows_of[written].abs().amax((-2, -1)).min() > 0


FALLBACK = r'''
import json, sys
from test_generation_gpu import leader_on_gpu
handler = leader_on_gpu(sys.argv[1], "bfloat16", kernels="auto")
print(json.dumps({"auto_uses_triton": handler.generation.executor.model.regions.triton}))
try:
    leader_on_gpu(sys.argv[1], "bfloat16", kernels="triton")
    print(json.dumps({"triton": "started"}))
except ValueError as exc:
    print(json.dumps({"triton": str(exc)}))
'''


@pytest.mark.timeout(300)
def test_auto_falls_back_to_torch_when_triton_cannot_compile(tmp_path, models):
    """A machine where Triton cannot build its kernels (here: its cache folder cannot be made) still
    serves with ``kernels: auto``, saying why; ``kernels: triton`` refuses to start, saying why."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    here = Path(__file__).resolve().parent
    env = {**os.environ, "TRITON_CACHE_DIR": str(blocker / "cache"),
           "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), str(here.parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", FALLBACK, models["llama"]], env=env, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines[0] == {"auto_uses_triton": False}, done.stdout
    assert "failed their self-check" in done.stdout          # the rank's log says why
    assert lines[1]["triton"].startswith("handler.kernels = 'triton': the Triton kernels failed their self-check")
