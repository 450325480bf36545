"""This rank's part of continuous generation, built from the handler's context.

The built-in causal-LM handler calls :func:`build_generation` in ``initialize``;
the worker then runs :func:`lmjupyter.worker.continuous.serve_continuous` over it.
``parallelType`` splits the model as elsewhere: tp shards every block, pp gives
each rank a contiguous slice of the layers, pptp both. Settings (``handler:``):

* ``max_seq_len`` — tokens a sequence may hold, prompt included (default: the
  model's ``max_position_embeddings``, at most 2048);
* ``prefill_chunk`` — prompt tokens prefilled per step (default 512);
* ``cuda_graphs`` — one CUDA graph per decode bucket (default: on for one GPU rank);
* ``compile`` — fuse the elementwise regions of each block (lmjupyter.generation.fused)
  with ``torch.compile`` (default off: the first requests would wait for the compile);
* ``kernels`` — ``auto`` (default: Triton's where they run), ``triton`` (an error where they
  cannot) or ``torch``: the few-row matmuls and the rotate-and-store of each block as the
  Triton kernels of :mod:`lmjupyter.generation.triton_kernels` (CUDA, bf16/fp16).

``batchSize`` is the number of slots: sequences decoded together.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lmjupyter.generation.cache import SlotCache
from lmjupyter.generation.executor import GroupPlace, StepExecutor
from lmjupyter.generation.fused import Regions, kernels_unavailable
from lmjupyter.generation.leader import Leader, PlanChannel, follow
from lmjupyter.generation.model import CompactDecoder, StagePlace, rotary_tables
from lmjupyter.generation.scheduler import Scheduler
from lmjupyter.generation.spec import DecoderSpec
from lmjupyter.generation.weights import load_stage_weights

log = logging.getLogger(__name__)
DEFAULT_MAX_SEQ_LEN = 2048
DEFAULT_PREFILL_CHUNK = 512


@dataclass
class Generation:
    slots: int
    executor: StepExecutor
    plans: PlanChannel
    leader: Leader | None       # on the decider rank; None elsewhere

    def follow(self) -> None:
        follow(self.executor, self.plans)


def _int_setting(hcfg: dict, key: str, default: int, low: int = 1) -> int:
    value = hcfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"handler.{key} = {value!r}: expected an integer >= {low}")
    return value


def _use_triton(kernels: str, device, dtype, q_heads: int, kv_heads: int, head_dim: int, rotary: bool) -> bool:
    """``handler.kernels``: whether this rank uses the Triton kernels. ``auto`` falls back to PyTorch's,
    saying why in the rank's log, where they cannot run or fail their self-check; ``triton`` fails."""
    if kernels not in ("auto", "torch", "triton"):
        raise ValueError(f"handler.kernels = {kernels!r}: expected auto, torch or triton")
    if kernels == "torch":
        return False
    reason = kernels_unavailable(device, dtype)
    if reason is None:
        from lmjupyter.generation.triton_kernels import self_check

        reason = self_check(device, dtype, q_heads, kv_heads, head_dim, rotary)
        if reason is not None and kernels == "auto":
            log.info("%s; using PyTorch's kernels", reason)
            print(f"lmjupyter: {reason}; using PyTorch's kernels (handler.kernels: torch hides this)", flush=True)
    if reason is not None and kernels == "triton":
        raise ValueError(f"handler.kernels = 'triton': {reason}")
    return reason is None


def build_generation(ctx, config, spec: DecoderSpec, tokenizer, eos_ids: set[int], *, pp: int, tp: int, dtype,
                     default_max_new_tokens: int, max_length: int | None, graphs: bool,
                     compile: bool = False, kernels: str = "auto") -> Generation:
    from lmjupyter.handlers.parallel.dist import make_layout
    from lmjupyter.handlers.parallel.sharded import split_layers

    hcfg = ctx.handler_config
    slots = int(ctx.model_yaml_config.get("batchSize", 1))
    max_len = _int_setting(hcfg, "max_seq_len", min(spec.max_positions, DEFAULT_MAX_SEQ_LEN), low=2)
    if max_len > spec.max_positions:
        raise ValueError(f"handler.max_seq_len = {max_len} is above the model's max_position_embeddings "
                         f"({spec.max_positions})")
    prefill_chunk = _int_setting(hcfg, "prefill_chunk", DEFAULT_PREFILL_CHUNK)
    device = torch.device(ctx.device)
    triton = _use_triton(kernels, device, dtype, spec.heads // tp, spec.kv_heads // tp, spec.head_dim,
                         rotary=spec.llama_like)

    layout = make_layout(ctx, pp, tp)
    start, stop = split_layers(spec.layers, pp)[layout.pp_index]
    first, last = layout.pp_index == 0, layout.pp_index == pp - 1
    tp_group = layout.tp_mesh.get_group() if tp > 1 else None
    progress = getattr(ctx, "report_progress", None)
    weights = load_stage_weights(
        ctx.model_dir, spec, (start, stop), first, last, tp, layout.tp_index, device, dtype,
        progress=(lambda done, total: progress("loading weights", done, total)) if callable(progress) else None)
    cache = SlotCache(stop - start, slots, spec.kv_heads // tp, max_len, spec.head_dim, dtype, device)
    rotary = rotary_tables(config, spec, max_len, device, dtype) if spec.llama_like else None
    model = CompactDecoder(spec, weights, StagePlace((start, stop), first, last, tp, layout.tp_index, tp_group),
                           cache, rotary, Regions(compile, triton))
    rank, world = ctx.rank, ctx.world_size
    decider = layout.decider_rank
    place = GroupPlace(world=world, rank=rank, decider=decider,
                       prev=rank - tp if not first else None, next=rank + tp if not last else None)
    executor = StepExecutor(model, place, device, slots, spec.hidden, dtype, graphs=graphs)
    plans = PlanChannel(world, decider, slots, prefill_chunk)
    leader = None
    if rank == decider:
        leader = Leader(executor, plans, Scheduler(slots, max_len, prefill_chunk), tokenizer, eos_ids,
                        default_max_new_tokens, max_length)
    log.info("continuous batching: %d slots x %d tokens, KV cache %.1f MiB, weights %.1f MiB on %s",
             slots, max_len, cache.nbytes / 2**20, weights.nbytes() / 2**20, device)
    print(f"continuous batching: {slots} slots x {max_len} tokens; KV cache {cache.nbytes / 2**20:.1f} MiB, "
          f"weights {weights.nbytes() / 2**20:.1f} MiB on {device}; kernels: {'triton' if triton else 'torch'}",
          flush=True)
    return Generation(slots, executor, plans, leader)
