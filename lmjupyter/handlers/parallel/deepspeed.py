"""DeepSpeed-Inference for a causal LM, used when model-config.yaml has ``deepspeed:``.

``deepspeed.config`` names a ds-config.json in the model dir (TorchServe's
key); its tensor-parallel degree defaults to the worker's world size.
DeepSpeed is imported only here, and only when asked for: where it cannot run
(not installed, no CUDA) ``initialize`` fails at once, saying why, rather than
at the first request.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path


class DeepSpeedUnavailable(RuntimeError):
    pass


def ds_config(ctx) -> dict:
    section = ctx.model_yaml_config.get("deepspeed") or {}
    name = section.get("config")
    config: dict = {}
    if name:
        path = Path(ctx.model_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"deepspeed.config: {name!r} is not a file in the model dir {ctx.model_dir}")
        config = json.loads(path.read_text())
    config.setdefault("tensor_parallel", {}).setdefault("tp_size", ctx.world_size)
    return config


def check_available(device: str):
    """Import deepspeed, or raise naming the reason it cannot run here."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        raise DeepSpeedUnavailable(
            f"deepspeed: DeepSpeed-Inference needs CUDA GPUs, but this rank's device is {device!r}"
            f"{'' if torch.cuda.is_available() else ' and torch sees no CUDA'}; "
            "use parallelType tp/pp/pptp on CPU, or deploy with deviceType: gpu"
        )
    try:
        import deepspeed
    except ImportError as exc:
        raise DeepSpeedUnavailable(
            f"deepspeed: the deepspeed package cannot be imported ({exc}); "
            "install it in the worker's environment (pip install 'lmjupyter[deepspeed]')"
        ) from exc
    return deepspeed


_ARCH = re.compile(r"^(\d+)\.(\d+)[a-z]*(\+PTX)?$")


def deepspeed_arch_list(value: str | None) -> str | None:
    """TORCH_CUDA_ARCH_LIST as DeepSpeed's op builder can read it, or None if it needs no change.

    PyTorch accepts architecture-specific targets such as ``9.0a`` (Hopper's
    wgmma/TMA) or ``10.0f``; DeepSpeed 0.19's JIT builder sorts the list with
    ``int(part)`` for each dot-separated part and fails on them with
    "invalid literal for int() with base 10: '0a'" (op_builder/builder.py,
    ``compute_capability_args``). Its kernels need no arch-specific
    instructions, so the plain ``9.0`` builds them.
    """
    if not value or not value.strip():
        return None
    entries = [e for e in value.replace(" ", ";").split(";") if e.strip()]
    fixed = []
    for entry in entries:
        match = _ARCH.match(entry.strip())
        fixed.append(f"{match.group(1)}.{match.group(2)}{match.group(3) or ''}" if match else entry.strip())
    fixed = list(dict.fromkeys(fixed))
    result = ";".join(fixed)
    return None if result == value else result


def load_deepspeed(ctx, dtype):
    """Load the HF model and hand it to ``deepspeed.init_inference``; returns the module."""
    config = ds_config(ctx)
    deepspeed = check_available(ctx.device)
    from transformers import AutoModelForCausalLM

    from lmjupyter.handlers.parallel.dist import ensure_process_group

    ensure_process_group(ctx)
    model = AutoModelForCausalLM.from_pretrained(ctx.model_dir, dtype=dtype, local_files_only=True).eval()
    config.setdefault("dtype", dtype)
    arch = deepspeed_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST"))
    if arch is not None:
        print(f"lmjupyter: TORCH_CUDA_ARCH_LIST {os.environ['TORCH_CUDA_ARCH_LIST']!r} -> {arch!r} "
              "for DeepSpeed's op builder (it cannot parse arch suffixes such as '9.0a')", flush=True)
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    inject = bool(config.get("replace_with_kernel_inject"))
    try:
        engine = deepspeed.init_inference(model, config=config)
    except Exception as exc:
        if not inject:
            raise
        raise DeepSpeedUnavailable(_injection_failed("init_inference", exc, config)) from exc
    module = engine.module
    if inject:
        # injected layers replace the family's own blocks: run one token now, so that a
        # layer that does not fit this transformers version fails the deploy, not a request
        try:
            _smoke_forward(module, ctx.device)
        except Exception as exc:
            raise DeepSpeedUnavailable(_injection_failed("a first forward", exc, config)) from exc
    return module


def _smoke_forward(module, device) -> None:
    import torch

    from lmjupyter.handlers.parallel.generation import ModelRunner

    runner = ModelRunner(module, device)
    runner.start(1)
    try:
        ids = torch.zeros((1, 2), dtype=torch.long, device=device)
        runner.forward(ids, torch.ones_like(ids), torch.arange(2, device=device)[None, :])
    finally:
        runner.finish()


def _injection_failed(where: str, exc: BaseException, config: dict) -> str:
    import deepspeed
    import transformers

    return (f"deepspeed: replace_with_kernel_inject failed in {where}: {type(exc).__name__}: {exc}. "
            f"DeepSpeed {deepspeed.__version__}'s inference kernels replace whole decoder layers and expect "
            f"the layer calling convention of transformers 4.x (tuples for past key values, multi-head qkv of "
            f"equal sizes); transformers {transformers.__version__} calls them differently "
            "(RESULTS-gpu.md in benchmarks/gpu has the measured cases). "
            'Deploy with "replace_with_kernel_inject": false in the ds config (DeepSpeed\'s automatic tensor '
            "parallelism, which works), or with parallelType tp.")
