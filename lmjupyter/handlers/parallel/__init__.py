"""How the ranks of a worker share a causal LM: one process, tp, pp, pptp or DeepSpeed.

:func:`build_runner` reads ``parallelType`` (and ``deepspeed:``) from the
model config and returns a runner for :func:`generation.generate`.
"""
from __future__ import annotations

from lmjupyter.handlers.parallel.dist import make_layout
from lmjupyter.handlers.parallel.families import family_for
from lmjupyter.handlers.parallel.generation import ModelRunner
from lmjupyter.handlers.parallel.pipeline import PipelineRunner
from lmjupyter.handlers.parallel.sharded import as_dtype, load_stage, load_tp_model

PARALLEL_TYPES = (None, "tp", "pp", "pptp")


def grid(ctx) -> tuple[int, int]:
    """(pp, tp) degrees for the context's parallelType and world size."""
    kind, world = ctx.parallel_type or None, ctx.world_size
    if kind not in PARALLEL_TYPES:
        raise ValueError(f"parallelType {kind!r}: expected one of pp, tp, pptp (or none)")
    if kind == "tp":
        return 1, world
    if kind == "pp":
        return world, 1
    if kind == "pptp":
        tp = int(ctx.handler_config.get("tp_size", 2))
        if tp < 1 or world % tp:
            raise ValueError(f"handler.tp_size={tp} must divide the {world} ranks of a pptp worker")
        return world // tp, tp
    return 1, 1


def _flag(hcfg: dict, key: str, default: bool) -> bool:
    value = hcfg.get(key, default)
    if isinstance(value, str):
        value = value.strip().lower() not in ("false", "0", "no", "off", "")
    return bool(value)


def single_runner(model, ctx):
    """One process: static cache + CUDA graphs on CUDA (``handler.cuda_graphs``, default on),
    the eager dynamic-cache loop otherwise. ``handler.static_cache`` forces the static-cache
    path without graphs (on CPU too: that is how its logic is tested there)."""
    from lmjupyter.handlers.parallel.static_decode import DEFAULT_MAX_BATCH, StaticDecodeRunner

    hcfg = ctx.handler_config
    cuda = str(ctx.device).startswith("cuda")
    graphs = cuda and _flag(hcfg, "cuda_graphs", True)
    static = graphs or _flag(hcfg, "static_cache", False)
    if not static:
        return ModelRunner(model, ctx.device)
    max_batch = int(hcfg.get("cuda_graph_max_batch", DEFAULT_MAX_BATCH))
    return StaticDecodeRunner(model, ctx.device, graphs=graphs, max_batch=max_batch)


def build_runner(ctx, config):
    """Load this rank's part of the model in ``ctx.model_dir`` and wrap it in a runner."""
    import torch

    dtype = as_dtype(ctx.handler_config.get("dtype"), ctx.device)
    if ctx.model_yaml_config.get("deepspeed"):
        from lmjupyter.handlers.parallel.deepspeed import load_deepspeed

        return ModelRunner(load_deepspeed(ctx, dtype), ctx.device)
    pp, tp = grid(ctx)
    if pp * tp == 1:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(ctx.model_dir, dtype=dtype, local_files_only=True)
        model = model.to(torch.device(ctx.device)).eval()
        return single_runner(model, ctx)
    layout = make_layout(ctx, pp, tp)
    family = family_for(config)
    if pp == 1:
        return ModelRunner(load_tp_model(ctx.model_dir, family, layout, dtype).eval(), ctx.device)
    stage = load_stage(ctx.model_dir, family, layout, dtype)
    chunks = (ctx.model_yaml_config.get("pippy") or {}).get("chunks", 1)
    return PipelineRunner(stage, layout, chunks, config.hidden_size, config.vocab_size, dtype)
