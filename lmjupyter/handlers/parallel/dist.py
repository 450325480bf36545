"""Process-group and device-mesh plumbing shared by the tp, pp and pptp paths.

The engine normally calls ``init_process_group`` before the handler's
``initialize``; :func:`ensure_process_group` only does it when nobody did, so
that a plain ``torchrun script.py`` (the tests) works the same way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def backend_for(device: str) -> str:
    """gloo for CPU tensors always; nccl as well when ranks own GPUs.

    A bare "nccl" group cannot carry CPU tensors, and on a machine with CUDA a
    CPU device mesh needs an explicit CPU backend (see DESIGN.md).
    """
    return "cpu:gloo,cuda:nccl" if str(device).startswith("cuda") else "gloo"


def ensure_process_group(ctx) -> None:
    """Join the torchrun group unless the engine already did; no-op for one rank."""
    if ctx.world_size <= 1 or dist.is_initialized():
        return
    for key, value in (("RANK", ctx.rank), ("LOCAL_RANK", ctx.local_rank), ("WORLD_SIZE", ctx.world_size)):
        os.environ.setdefault(key, str(value))
    if "MASTER_ADDR" not in os.environ:
        raise RuntimeError(
            f"world_size={ctx.world_size} but no process group exists and MASTER_ADDR is unset: "
            "launch the ranks with torchrun"
        )
    if str(ctx.device).startswith("cuda"):
        torch.cuda.set_device(torch.device(ctx.device))
    dist.init_process_group(backend=backend_for(ctx.device))


@dataclass
class Layout:
    """Where this rank sits in a pp x tp grid (rank = pp_index * tp + tp_index)."""

    pp: int
    tp: int
    rank: int
    device: torch.device
    mesh: object = None  # DeviceMesh of shape (pp, tp), None for one rank
    progress: object = None  # ctx.report_progress(phase, done, total), for the loaders

    @property
    def pp_index(self) -> int:
        return self.rank // self.tp

    @property
    def tp_index(self) -> int:
        return self.rank % self.tp

    @property
    def tp_mesh(self):
        return self.mesh["tp"] if self.mesh is not None and self.tp > 1 else None

    @property
    def pp_group(self):
        return self.mesh["pp"].get_group() if self.mesh is not None and self.pp > 1 else None

    @property
    def decider_rank(self) -> int:
        """The rank that holds the logits: tp index 0 of the last stage."""
        return (self.pp - 1) * self.tp


def make_layout(ctx, pp: int, tp: int) -> Layout:
    if pp * tp != ctx.world_size:
        raise ValueError(f"pp={pp} x tp={tp} does not match world_size={ctx.world_size}")
    device = torch.device(ctx.device)
    progress = getattr(ctx, "report_progress", None)
    if ctx.world_size == 1:
        return Layout(1, 1, 0, device, progress=progress)
    ensure_process_group(ctx)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (pp, tp), mesh_dim_names=("pp", "tp"))
    return Layout(pp, tp, dist.get_rank(), device, mesh, progress=progress)


def broadcast_(tensor: torch.Tensor, src: int) -> torch.Tensor:
    """In-place broadcast over the whole group; identity for one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(tensor, src=src)
    return tensor
