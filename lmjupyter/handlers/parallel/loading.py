"""Build a model with no weights, then read only this rank's part of the checkpoint.

Each rank of a tp/pp group constructs the module tree with parameters on the
meta device (no memory), and fills every parameter from the safetensors files
with ``safe_open(...).get_slice``, which reads only the bytes of the requested
region. A parameter that is a DTensor gets exactly its local shard; a plain
parameter is read whole. Peak memory per rank is thus about the rank's share
of the model, not the whole model. On a GPU the file is opened with
``device=`` the rank's GPU, so that safetensors copies each slice from the
file mapping to the device itself (no host tensor in between, where its
version supports it) and the dtype cast runs on the GPU. ``progress(phase,
done, total)`` (the handler's ``ctx.report_progress``) hears "loading
weights" once per parameter.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@contextlib.contextmanager
def params_on_meta():
    """Create parameters on the meta device but keep buffers real.

    Buffers such as rotary ``inv_freq`` are computed in ``__init__`` and are
    not in the checkpoint; building under ``torch.device("meta")`` would lose
    them. Parameters are moved to meta as they are registered (the tensors
    created by ``torch.empty`` are never touched, so they cost no memory).
    """
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


class Checkpoint:
    """The safetensors files of a model folder (one file or an index of shards)."""

    def __init__(self, model_dir: str | Path):
        from safetensors import safe_open

        self._open = safe_open
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        single = model_dir / "model.safetensors"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {key: model_dir / name for key, name in weight_map.items()}
        elif single.exists():
            with safe_open(str(single), framework="pt") as f:
                self.files = {key: single for key in f.keys()}
        else:
            raise FileNotFoundError(
                f"{model_dir} holds no model.safetensors or model.safetensors.index.json; "
                "sharded loading reads safetensors only (re-save with save_pretrained(safe_serialization=True))"
            )

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def slice(self, key: str, device: str = "cpu"):
        """A lazy slice of one tensor; indexing it reads that region onto ``device``. The file
        is opened per tensor on purpose: the pages a read touches stay mapped until its handle
        and views are gone, so a long-lived handle would count the whole checkpoint in the
        rank's memory."""
        return self._open(str(self.files[key]), framework="pt", device=device).get_slice(key)


@dataclass
class Source:
    """Where a parameter comes from: checkpoint key, stored transposed (Conv1D),
    and how many equal parts are fused along dim 0 (GPT-2's c_attn: q, k, v)."""

    key: str
    transpose: bool = False
    fused: int = 1


def _read(ckpt: Checkpoint, src: Source, region: list[slice], device: str = "cpu") -> torch.Tensor:
    """Read ``region`` of the parameter (model layout) from the checkpoint."""
    sl = ckpt.slice(src.key, device)
    if src.transpose:
        return sl[tuple(region[::-1])].t()
    return sl[tuple(region)]


def _local_region(shape, mesh, placements) -> list[slice]:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local, offset = compute_local_shape_and_global_offset(shape, mesh, placements)
    return [slice(o, o + n) for o, n in zip(offset, local)]


def _load_one(ckpt: Checkpoint, src: Source, param: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    shape = tuple(param.shape)
    if not isinstance(param, DTensor):
        return _read(ckpt, src, [slice(0, n) for n in shape], device)
    mesh, placements = param.device_mesh, param.placements
    if src.fused == 1:
        return _read(ckpt, src, _local_region(shape, mesh, placements), device)
    part = (shape[0] // src.fused,) + shape[1:]
    region = _local_region(part, mesh, placements)
    pieces = []
    for i in range(src.fused):
        shifted = [slice(region[0].start + i * part[0], region[0].stop + i * part[0])] + region[1:]
        pieces.append(_read(ckpt, src, shifted, device))
    return torch.cat(pieces, dim=0)


def materialize(model: nn.Module, ckpt: Checkpoint, source_of, device, dtype, progress=None) -> None:
    """Replace every meta parameter of ``model`` by its slice of the checkpoint.

    ``source_of(name)`` maps a parameter name of ``model`` to a :class:`Source`.
    Parameters shared between modules (tied embeddings) stay shared. Buffers
    move to ``device`` as they are. ``progress("loading weights", n, total)``
    is called before the first and after every parameter.
    """
    from torch.distributed.tensor import DTensor

    device = torch.device(device)
    read_to = str(device) if device.type == "cuda" else "cpu"
    total = len({id(p) for m in model.modules() for p in m._parameters.values() if p is not None})
    if progress is not None:
        progress("loading weights", 0, total)
    done: dict[int, nn.Parameter] = {}
    for mod_name, module in model.named_modules():
        for pname, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in done:
                name = f"{mod_name}.{pname}" if mod_name else pname
                src = source_of(name)
                if src.key not in ckpt:
                    raise KeyError(f"parameter {name}: checkpoint has no tensor {src.key!r}")
                local = _load_one(ckpt, src, param, read_to)
                # On the CPU always a private, contiguous copy: safetensors may return views
                # of its file mapping, and a column shard's view would keep the pages of the
                # whole tensor resident for as long as the model lives. A slice read onto
                # the GPU is private memory already: no second copy there.
                local = local.to(device=device, dtype=dtype if local.is_floating_point() else None,
                                 copy=local.device.type == "cpu", memory_format=torch.contiguous_format)
                if isinstance(param, DTensor):
                    local = DTensor.from_local(
                        local, param.device_mesh, param.placements, run_check=False,
                        shape=param.shape, stride=param.stride(),
                    )
                done[id(param)] = nn.Parameter(local, requires_grad=False)
                if progress is not None:
                    progress("loading weights", len(done), total)
            module._parameters[pname] = done[id(param)]
        for bname, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[bname] = buf.to(device)
