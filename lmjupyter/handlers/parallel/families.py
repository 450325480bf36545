"""What differs between model families: module names, tp plans, stage surgery.

Everything else (masks, rotary embeddings, the KV cache) is left to the
family's own Hugging Face forward, so that a pipeline stage or a tp shard runs
exactly the code a single process runs. Supported: the Llama family (``llama``,
GQA included) and GPT-2 (``gpt2``: Conv1D layers, fused qkv, tied head).
"""
from __future__ import annotations

import copy
import inspect
import re

import torch
from torch import nn

from lmjupyter.handlers.parallel.loading import Source


class ZeroPositions(nn.Module):
    """Stands in for GPT-2's ``wpe`` on later stages: their input already holds it."""

    def __init__(self, dim: int, dtype: torch.dtype):
        super().__init__()
        self.dim, self.dtype = dim, dtype

    def forward(self, position_ids):
        return torch.zeros(*position_ids.shape, self.dim, dtype=self.dtype, device=position_ids.device)


class Family:
    model_types: tuple[str, ...] = ()
    base_prefix = ""          # attribute of the causal LM holding the base model
    layers = ""               # attribute of the base model holding the decoder layers
    embed = ""                # token embedding (first stage only)
    norm = ""                 # final norm (last stage only)

    def __init__(self, config):
        self.config = config

    # ---- names ---------------------------------------------------------------
    def layer_name(self, i: int) -> str:
        return f"{self.base_prefix}.{self.layers}.{i}"

    def source_of(self, name: str, ckpt, layer_offset: int = 0) -> Source:
        """Checkpoint key of a parameter named in a (possibly sliced) model."""
        pattern = rf"^{re.escape(self.base_prefix)}\.{self.layers}\.(\d+)\."
        key = re.sub(pattern, lambda m: f"{self.base_prefix}.{self.layers}.{int(m.group(1)) + layer_offset}.", name)
        if key == "lm_head.weight" and key not in ckpt:   # tied head: stored once, as the embedding
            key = f"{self.base_prefix}.{self.embed}.weight"
        if key not in ckpt and key.startswith(self.base_prefix + "."):
            bare = key[len(self.base_prefix) + 1:]       # checkpoints saved from the base model
            key = bare if bare in ckpt else key
        return Source(key)

    # ---- tensor parallel -----------------------------------------------------
    def check_tp(self, tp: int) -> None:
        heads = self.config.num_attention_heads
        if heads % tp:
            raise ValueError(f"tp={tp} must divide num_attention_heads={heads}")

    def prepare_tp(self, model: nn.Module, tp: int) -> None:
        """Module surgery needed before ``parallelize_module`` (none by default)."""

    def tp_plan(self, num_layers: int, has_embed: bool, has_head: bool) -> dict:
        raise NotImplementedError

    def after_tp(self, model: nn.Module, tp: int) -> None:
        """Fix-ups after ``parallelize_module``: re-tie a tied head to the embedding
        (both are sharded on the vocab dim, so one DTensor serves both)."""
        embed = getattr(getattr(model, self.base_prefix), self.embed, None)
        head = getattr(model, "lm_head", None)
        if getattr(self.config, "tie_word_embeddings", False) and embed is not None and head is not None:
            head.weight = embed.weight

    def _common_plan(self, has_embed: bool, has_head: bool) -> dict:
        from torch.distributed.tensor import Replicate
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

        plan = {}
        if has_embed:
            plan[f"{self.base_prefix}.{self.embed}"] = RowwiseParallel(
                input_layouts=Replicate(), output_layouts=Replicate()
            )
        if has_head:
            plan["lm_head"] = ColwiseParallel(output_layouts=Replicate())
        return plan

    # ---- pipeline stages -----------------------------------------------------
    def stage_config(self, start: int, stop: int):
        """The config of a model holding only layers ``start:stop`` (renumbered from 0)."""
        cfg = copy.deepcopy(self.config)
        cfg.num_hidden_layers = stop - start
        if getattr(cfg, "layer_types", None) is not None:
            cfg.layer_types = list(self.config.layer_types)[start:stop]
        return cfg

    def trim_stage(self, lm: nn.Module, first: bool, last: bool, layer_offset: int, dtype) -> None:
        """Drop what this stage does not run: embeddings off the first, norm and head off the last."""
        base = getattr(lm, self.base_prefix)
        if not first:
            setattr(base, self.embed, None)
        if not last:
            setattr(base, self.norm, nn.Identity())
            lm.lm_head = None


class LlamaFamily(Family):
    model_types = ("llama",)
    base_prefix, layers, embed, norm = "model", "layers", "embed_tokens", "norm"

    def check_tp(self, tp: int) -> None:
        super().check_tp(tp)
        kv = self.config.num_key_value_heads
        if kv % tp:
            raise ValueError(f"tp={tp} must divide num_key_value_heads={kv} (kv heads are not replicated)")

    def tp_plan(self, num_layers, has_embed, has_head):
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

        plan = self._common_plan(has_embed, has_head)
        for i in range(num_layers):
            p = self.layer_name(i)
            for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
                plan[f"{p}.{name}"] = ColwiseParallel()
            plan[f"{p}.self_attn.o_proj"] = RowwiseParallel()
            plan[f"{p}.mlp.down_proj"] = RowwiseParallel()
        return plan


class GPT2Family(Family):
    model_types = ("gpt2",)
    base_prefix, layers, embed, norm = "transformer", "h", "wte", "ln_f"
    _colwise = ("attn.c_attn", "mlp.c_fc")
    _rowwise = ("attn.c_proj", "mlp.c_proj")

    def __init__(self, config):
        super().__init__(config)
        self.linear = False  # Conv1D layers turned into nn.Linear (tp only)

    def source_of(self, name, ckpt, layer_offset=0):
        src = super().source_of(name, ckpt, layer_offset)
        if self.linear and re.search(r"\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$", name):
            src.transpose = True   # Conv1D stores [in, out]; Linear wants [out, in]
        if ".attn.c_attn." in name and self.linear:
            src.fused = 3          # q, k, v: shard each third, not the whole
        return src

    def prepare_tp(self, model, tp):
        """Conv1D has no tp style; the same maths as nn.Linear with a transposed weight."""
        from transformers.pytorch_utils import Conv1D

        if self.config.n_embd % tp:
            raise ValueError(f"tp={tp} must divide n_embd={self.config.n_embd}")
        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, Conv1D):
                    d_in, d_out = child.weight.shape
                    with torch.device("meta"):
                        linear = nn.Linear(d_in, d_out)
                    linear.requires_grad_(False)
                    setattr(parent, child_name, linear)
        self.linear = True

    def tp_plan(self, num_layers, has_embed, has_head):
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

        plan = self._common_plan(has_embed, has_head)
        for i in range(num_layers):
            p = self.layer_name(i)
            plan.update({f"{p}.{n}": ColwiseParallel() for n in self._colwise})
            plan.update({f"{p}.{n}": RowwiseParallel() for n in self._rowwise})
        return plan

    def after_tp(self, model, tp):
        super().after_tp(model, tp)
        for block in getattr(getattr(model, self.base_prefix), self.layers):
            block.attn.split_size = self.config.n_embd // tp   # the local q|k|v widths

    def trim_stage(self, lm, first, last, layer_offset, dtype):
        super().trim_stage(lm, first, last, layer_offset, dtype)
        base = getattr(lm, self.base_prefix)
        if not first:
            base.wpe = ZeroPositions(self.config.n_embd, dtype)
        if self.config.scale_attn_by_inverse_layer_idx:
            for i, block in enumerate(getattr(base, self.layers)):
                block.attn.scaling = block.attn.head_dim ** -0.5 / float(i + layer_offset + 1)


FAMILIES = {t: cls for cls in (LlamaFamily, GPT2Family) for t in cls.model_types}


def family_for(config) -> Family:
    try:
        return FAMILIES[config.model_type](config)
    except KeyError:
        raise ValueError(
            f"model_type {config.model_type!r} has no tp/pp support yet (supported: {sorted(FAMILIES)}); "
            "deploy it without parallelType, or with a deepspeed: section"
        ) from None


def cache_kwarg(module: nn.Module) -> str:
    """``cache`` in transformers >= 5.2x, ``past_key_values`` before."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
