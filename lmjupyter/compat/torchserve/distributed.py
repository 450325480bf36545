"""TorchServe's large-model bases and helpers (``ts.torch_handler.distributed``, ``ts.handler_utils.distributed``).

lmjupyter starts every rank of a worker with the default process group already
initialised (gloo on CPU, ``cpu:gloo,cuda:nccl`` on GPU), so the bases only set
what TorchServe's set: ``local_rank``, ``world_size`` and ``device``.
``get_ds_engine`` wraps a model in DeepSpeed-Inference as TorchServe's does.
PiPPy's RPC pipeline driver (``get_pipeline_driver``) has no successor that one
rank can drive alone: torch.distributed.pipelining needs every stage to step, so
it raises, naming what to use instead.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from lmjupyter.compat.torchserve.base_handler import BaseHandler


def _device_for(local_rank: int):
    import torch

    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


class BasePippyHandler(BaseHandler):
    """TorchServe's pipeline-parallel base: this rank's place in the worker, the process group up."""

    def initialize(self, ctx):
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = _device_for(self.local_rank)
        initialize_rpc_workers(self.local_rank, self.world_size, ctx)


class BaseDeepSpeedHandler(BaseHandler):
    """TorchServe's DeepSpeed base: ``self.device`` is the rank's local GPU index."""

    def initialize(self, ctx):
        self.device = int(os.getenv("LOCAL_RANK", "0"))


def initialize_rpc_workers(local_rank, world_size, ctx) -> None:
    """TorchServe started torch RPC here for PiPPy; lmjupyter's ranks share a process group instead."""
    return None


def get_pipeline_driver(model, world_size, ctx):
    raise NotImplementedError(
        "get_pipeline_driver needs PiPPy's RPC pipeline driver (the discontinued `pippy` package), which lets "
        "rank 0 drive the other stages alone; its successor, torch.distributed.pipelining, needs every rank to "
        "step the schedule. Deploy the model folder with the built-in handler and parallelType: pp (no handler "
        "code), or build PipelineStage/ScheduleGPipe in your handler and call step() on every rank (lmjupyter "
        "sends each batch to every rank)")


def create_checkpoints_json(model_path, checkpoints_json) -> None:
    """DeepSpeed's checkpoint list of the ``*.bin``/``*.pt`` files under ``model_path``."""
    files = [str(p) for p in Path(model_path).rglob("*.[bp][it][n]") if p.is_file()]
    with open(checkpoints_json, "w") as f:
        json.dump({"type": "ds_model", "checkpoints": files, "version": 1.0}, f)


def get_ds_engine(model, ctx):
    """``deepspeed.init_inference`` with the ``deepspeed:`` section of model-config.yaml (config, checkpoint)."""
    from lmjupyter.handlers.parallel.deepspeed import check_available

    section = ctx.model_yaml_config.get("deepspeed")
    if not section:
        raise ValueError(f"{ctx.model_name} has no deepspeed config in model config yaml file")
    model_dir = ctx.system_properties.get("model_dir")
    model_path = (ctx.model_yaml_config.get("handler") or {}).get("model_path", model_dir)
    ds_config = checkpoint = None
    if section.get("config"):
        ds_config = os.path.join(model_dir, section["config"])
        if not os.path.exists(ds_config):
            raise ValueError(f"{ctx.model_name} has no deepspeed config file {ds_config}")
    if section.get("checkpoint"):
        checkpoint = os.path.join(model_dir, section["checkpoint"])
        create_checkpoints_json(model_path, checkpoint)
    deepspeed = check_available(str(getattr(ctx, "device", "cuda:0")))
    return deepspeed.init_inference(model, config=ds_config, base_dir=model_path, checkpoint=checkpoint)
