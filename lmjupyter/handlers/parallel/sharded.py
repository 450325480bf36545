"""Build this rank's part of a causal LM: a tp shard, a pipeline stage, or both.

Modules are created with meta parameters (see ``loading.params_on_meta``),
cut down to the rank's layers, parallelized on the tp mesh, and only then
filled from the checkpoint, so nothing outside the rank's part is ever read.
"""
from __future__ import annotations

import torch
from torch import nn

from lmjupyter.handlers.parallel.families import Family, cache_kwarg
from lmjupyter.handlers.parallel.loading import Checkpoint, materialize, params_on_meta


def split_layers(num_layers: int, stages: int) -> list[tuple[int, int]]:
    """Contiguous layer ranges per stage; the remainder goes to the earliest
    stages, since the last one also runs the norm and the vocab projection."""
    if stages > num_layers:
        raise ValueError(f"{stages} pipeline stages but only {num_layers} decoder layers")
    base, extra = divmod(num_layers, stages)
    bounds, start = [], 0
    for i in range(stages):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _empty_lm(config):
    from transformers import AutoModelForCausalLM

    with params_on_meta():
        return AutoModelForCausalLM.from_config(config).eval()


def _tensor_parallel(model: nn.Module, family: Family, tp_mesh, num_layers, has_embed, has_head) -> None:
    from torch.distributed.tensor.parallel import parallelize_module

    tp = tp_mesh.size()
    family.check_tp(tp)
    family.prepare_tp(model, tp)
    parallelize_module(model, tp_mesh, family.tp_plan(num_layers, has_embed, has_head))
    family.after_tp(model, tp)


def load_tp_model(model_dir, family: Family, layout, dtype) -> nn.Module:
    """The whole causal LM, every matrix sharded over the tp ranks."""
    model = _empty_lm(family.config)
    if layout.tp > 1:
        _tensor_parallel(model, family, layout.tp_mesh, family.config.num_hidden_layers, True, True)
    ckpt = Checkpoint(model_dir)
    materialize(model, ckpt, lambda name: family.source_of(name, ckpt), layout.device, dtype, layout.progress)
    return model


class Stage(nn.Module):
    """One pipeline stage: a slice of the decoder layers run by the family's own forward.

    The first stage takes token ids, later ones the previous stage's hidden
    states; the last returns the logits of the final position. Each microbatch
    keeps its own KV cache, keyed by the index of its first row (``rows``), so
    that decode steps feed one token per sequence.
    """

    def __init__(self, lm: nn.Module, family: Family, first: bool, last: bool):
        super().__init__()
        self.base = getattr(lm, family.base_prefix)
        self.head = lm.lm_head if last else None
        self.first, self.last = first, last
        self._cache_kw = cache_kwarg(self.base)
        self.caches: dict[int, object] = {}

    def forward(self, x, attention_mask, position_ids, rows):
        from transformers import DynamicCache

        key = int(rows[0])
        if key not in self.caches:
            self.caches[key] = DynamicCache(config=self.base.config)
        cache = self.caches[key]
        kwargs = {"attention_mask": attention_mask, "position_ids": position_ids,
                  self._cache_kw: cache, "use_cache": True}
        if self.first:
            hidden = self.base(input_ids=x, **kwargs)[0]
        else:
            hidden = self.base(inputs_embeds=x, **kwargs)[0]
        # contiguous: torch 2.11 checks strides against the static output shape, and an
        # uneven vocab shard gathers into a padded buffer (stride 322 for 321 logits)
        out = self.head(hidden[:, -1, :]) if self.last else hidden
        return out.contiguous()


def load_stage(model_dir, family: Family, layout, dtype) -> Stage:
    """This rank's stage (tp-sharded when the layout has tp > 1)."""
    bounds = split_layers(family.config.num_hidden_layers, layout.pp)
    start, stop = bounds[layout.pp_index]
    first, last = layout.pp_index == 0, layout.pp_index == layout.pp - 1
    lm = _empty_lm(family.stage_config(start, stop))
    family.trim_stage(lm, first, last, start, dtype)
    if layout.tp > 1:
        _tensor_parallel(lm, family, layout.tp_mesh, stop - start, first, last)
    ckpt = Checkpoint(model_dir)
    materialize(lm, ckpt, lambda name: family.source_of(name, ckpt, layer_offset=start), layout.device, dtype,
                layout.progress)
    return Stage(lm, family, first, last).eval()


def as_dtype(name, device) -> torch.dtype:
    """``handler: {dtype: ...}``; "auto" keeps float32 on CPU, bfloat16 on GPU."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"handler.dtype: {name!r} is not a torch dtype (float32, bfloat16, float16)")
    return dtype
