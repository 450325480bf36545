"""The engine: deployed models by name, GPU assignment, and where files may come from.

No Jupyter in here: ``lmjupyter serve`` and the Jupyter server extension both
mount the same REST routes over one :class:`Engine`::

    engine = Engine(EngineSettings(root_dir=".", gpus=[]))
    await engine.deploy({"name": "echo", "handler": "echo.py",
                         "config": {"deviceType": "cpu", "torchrun": {"nproc-per-node": 2}},
                         "wait": True})
    request = engine.model("echo").submit(b'"hi"', "application/json")
    status, content_type, body = await request.future
    await engine.shutdown()
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import lmjupyter
from lmjupyter.config import ConfigError, ModelConfig, load_config
from lmjupyter.engine.metrics import EngineMetrics
from lmjupyter.engine.model import ServedModel
from lmjupyter.engine.states import ModelState
from lmjupyter.engine.worker_group import WorkerSpec, read_tail
from lmjupyter.errors import ApiError
from lmjupyter.gpus import GpuAllocationError, GpuAllocator, Holder

log = logging.getLogger("lmjupyter")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
BUILTIN_CAUSAL_LM = "lmjupyter.handlers.causal_lm:CausalLMHandler"
DEPLOY_KEYS = {"name", "handler", "model_dir", "archive", "config", "config_file", "wait", "dry_run",
               "workers", "version"}
RESERVED_TORCHRUN_KEYS = {"no-python", "no_python", "module", "m", "run-path", "run_path", "standalone"}


@dataclass
class EngineSettings:
    root_dir: str = "."
    model_store: str | None = None
    gpus: list[int] = field(default_factory=list)
    allowed_roots: list[str] = field(default_factory=list)


class Engine:
    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self.root_dir = os.path.realpath(settings.root_dir)
        self.allowed_roots = [os.path.realpath(p) for p in
                              [self.root_dir, settings.model_store, *settings.allowed_roots] if p]
        self.allocator = GpuAllocator(list(settings.gpus))
        self.metrics = EngineMetrics()
        self.run_dir = tempfile.mkdtemp(prefix="lmj-")  # private (0700): sockets, specs, logs
        self.listeners: list[Callable[[], None]] = []
        self._models: dict[str, ServedModel] = {}
        self._starting: set[asyncio.Task] = set()

    # ---- queries ----------------------------------------------------------------------------
    def model(self, name: str) -> ServedModel:
        try:
            return self._models[name]
        except KeyError:
            raise ApiError(404, f"no model named {name!r} is deployed") from None

    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    def describe_gpus(self) -> list[dict]:
        self.allocator.held = self._held_gpus()
        return self.allocator.describe()

    def logs(self, name: str, rank: int | None = None, tail: int = 100) -> list[dict]:
        model = self.model(name)
        out = []
        for worker_id in sorted(model.workers):
            log_dir = self._log_dir(model.name, model.version, worker_id)
            ranks = [rank] if rank is not None else range(model.config.nproc)
            for r in ranks:
                text = read_tail(os.path.join(log_dir, f"rank{r}.log"), tail)
                out.append({"worker": worker_id, "rank": r, "lines": text.splitlines()})
        return out

    # ---- deploy -----------------------------------------------------------------------------
    async def deploy(self, body: dict) -> dict:
        """Validate a deploy body, plan GPUs and start workers (or only plan, for a dry run)."""
        request = self._parse_deploy(body)
        name, config = request["name"], request["config"]
        existing = self._models.get(name)
        if existing is not None and existing.state != ModelState.FAILED and not request["dry_run"]:
            raise ApiError(409, f"model {name!r} is already deployed ({existing.state.value}); undeploy it first")
        plan = self._plan_gpus(name, config, list(range(1, config.minWorkers + 1)))
        if request["dry_run"]:
            return self._dry_run(request, plan)
        if existing is not None:
            await self.undeploy(name)
        model = ServedModel(name, request["version"], config, handler=request["handler"],
                            model_dir=request["model_dir"], gpu_plan=plan,
                            make_spec=lambda wid, gpus: self._worker_spec(model, wid, gpus),
                            metrics=self.metrics.for_model(name), on_change=self._changed)
        model.warnings = request["warnings"]
        for warning in model.warnings:
            log.warning("deploy %s: %s", name, warning)
        log.info("deploying %s v%s: %d worker(s) x %d rank(s) on %s", name, model.version,
                 config.minWorkers, config.nproc, config.deviceType)
        self._models[name] = model
        self._changed()
        task = asyncio.ensure_future(model.start())
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)
        if request["wait"]:
            await asyncio.shield(task)
            if model.state == ModelState.FAILED:
                raise ApiError(500, model.error["message"], traceback=model.error.get("traceback"),
                               model=model.describe())
        return model.describe()

    def _parse_deploy(self, body: Any) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "deploy body must be a JSON object")
        unknown = sorted(set(body) - DEPLOY_KEYS)
        if unknown:
            raise ApiError(400, f"unknown deploy key(s) {unknown}; expected some of {sorted(DEPLOY_KEYS)}",
                           key=unknown[0])
        name = body.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ApiError(400, f"name = {name!r}: expected 1-64 letters, digits, '.', '_' or '-'", key="name")
        for key in ("wait", "dry_run"):
            if not isinstance(body.get(key, False), bool):
                raise ApiError(400, f"{key} = {body[key]!r}: expected true or false", key=key)
        if body.get("archive") is not None:
            raise ApiError(400, "archive: deploying archives is not supported by this server yet", key="archive")
        model_dir = self._checked_path(body.get("model_dir"), "model_dir", directory=True)
        handler = self._resolve_handler(body.get("handler"), model_dir)
        config, warnings = self._load_deploy_config(body, model_dir)
        workers = body.get("workers")
        if workers is not None:
            if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
                raise ApiError(400, f"workers = {workers!r}: expected an integer >= 0", key="workers")
            config = config.model_copy(update={"minWorkers": workers,
                                               "maxWorkers": max(workers, config.maxWorkers)})
        if config.deviceType is None:
            config = config.model_copy(update={"deviceType": "gpu" if self.allocator.gpus else "cpu"})
        version = str(body.get("version", "1"))
        return {"name": name, "handler": handler, "model_dir": model_dir or self.root_dir, "config": config,
                "warnings": warnings, "wait": body.get("wait", False), "dry_run": body.get("dry_run", False),
                "version": version}

    def _load_deploy_config(self, body: dict, model_dir: str | None) -> tuple[ModelConfig, list[str]]:
        config, config_file = body.get("config"), body.get("config_file")
        if config is not None and config_file is not None:
            raise ApiError(400, "give config or config_file, not both", key="config")
        if config is not None and not isinstance(config, (dict, str)):
            raise ApiError(400, "config: expected a mapping of model-config keys (or YAML text)", key="config")
        filename = "config"
        if config_file is None and config is None and model_dir:
            default = os.path.join(model_dir, "model-config.yaml")
            config_file = default if os.path.isfile(default) else None
        if config_file is not None:
            base = model_dir if model_dir and not os.path.isabs(str(config_file)) else None
            path = self._checked_path(config_file, "config_file", base=base)
            filename = os.path.basename(path)
            with open(path, encoding="utf-8") as f:
                config = f.read()
        try:
            return load_config(config, filename=filename)
        except ConfigError as exc:
            raise ApiError(400, str(exc), key=exc.key, line=exc.line) from None

    def _resolve_handler(self, handler: Any, model_dir: str | None) -> str:
        if handler is None:
            if model_dir and os.path.isfile(os.path.join(model_dir, "config.json")):
                return BUILTIN_CAUSAL_LM
            raise ApiError(400, "handler is required (a .py path or module:Class), unless model_dir "
                                "holds a Hugging Face causal LM", key="handler")
        if not isinstance(handler, str) or not handler.strip():
            raise ApiError(400, f"handler = {handler!r}: expected a .py path or module:Class", key="handler")
        file_part, sep, cls = handler.rpartition(":")
        if not (sep and cls.isidentifier()):
            file_part, cls = handler, ""
        if file_part.endswith(".py") or os.sep in file_part:
            base = model_dir if model_dir and os.path.exists(os.path.join(model_dir, file_part)) else None
            path = self._checked_path(file_part, "handler", base=base)
            return f"{path}:{cls}" if cls else path
        if not all(part.isidentifier() for part in file_part.split(".")):
            raise ApiError(400, f"handler = {handler!r}: expected a .py path or module:Class", key="handler")
        return handler

    def _checked_path(self, value: Any, key: str, *, base: str | None = None, directory: bool = False) -> str | None:
        """A real path inside the allowed roots, or a 400 naming the key (no URLs, no escapes)."""
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ApiError(400, f"{key} = {value!r}: expected a path", key=key)
        if "://" in value:
            raise ApiError(400, f"{key} = {value!r}: only local paths are accepted, not URLs", key=key)
        path = os.path.realpath(os.path.join(base or self.root_dir, os.path.expanduser(value)))
        if not any(os.path.commonpath([path, root]) == root for root in self.allowed_roots):
            raise ApiError(403, f"{key} = {value!r} is outside the allowed roots "
                                f"({', '.join(self.allowed_roots)}); add it with --allow-root", key=key)
        if not os.path.exists(path):
            raise ApiError(400, f"{key} = {value!r}: {path} does not exist", key=key)
        if directory and not os.path.isdir(path):
            raise ApiError(400, f"{key} = {value!r}: expected a directory", key=key)
        return path

    # ---- GPUs and worker specs ---------------------------------------------------------------
    def _held_gpus(self, excluding: str | None = None) -> dict[int, Holder]:
        return {gpu: Holder(m.name, wid) for m in self._models.values() if m.name != excluding
                for wid, gpus in m.gpus.items() for gpu in gpus}

    def _plan_gpus(self, name: str, config: ModelConfig, worker_ids: list[int],
                   own: dict[int, list[int]] | None = None) -> dict[int, list[int]]:
        if config.deviceType != "gpu":
            return {wid: [] for wid in worker_ids}
        held = self._held_gpus(excluding=name)
        for wid, gpus in (own or {}).items():
            held.update({gpu: Holder(name, wid) for gpu in gpus})
        self.allocator.held = held
        try:
            return self.allocator.plan(name, worker_ids, config.nproc, config.deviceIds)
        except GpuAllocationError as exc:
            raise ApiError(400, str(exc), key="deviceIds" if config.deviceIds else "torchrun.nproc-per-node") from None

    def _torchrun_args(self, config: ModelConfig) -> list[str]:
        extra = config.torchrun.passthrough()
        bad = sorted(RESERVED_TORCHRUN_KEYS & set(extra))
        if bad:
            raise ApiError(400, f"torchrun.{bad[0]} is set by lmjupyter and cannot be given", key=f"torchrun.{bad[0]}")
        args = [] if {"rdzv-endpoint", "rdzv_endpoint", "nnodes"} & set(extra) else ["--standalone", "--nnodes", "1"]
        args += ["--nproc-per-node", str(config.nproc)]
        if not {"monitor-interval", "monitor_interval"} & set(extra):
            args += ["--monitor-interval", "0.1"]  # the default 5 s delays every exit by seconds
        for key, value in extra.items():
            if value is True:
                args.append(f"--{key}")
            elif value not in (False, None):
                args += [f"--{key}", str(value)]
        return args

    def _worker_env(self, config: ModelConfig, gpus: list[int]) -> dict[str, str]:
        env = dict(os.environ)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(lmjupyter.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in [package_parent, env.get("PYTHONPATH", "")] if p)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        env["OMP_NUM_THREADS"] = str(config.torchrun.omp_number_threads)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("TORCHELASTIC_RUN_ID", None)
        return env

    def _worker_spec(self, model: ServedModel, worker_id: int, gpus: list[int]) -> WorkerSpec:
        config = model.config
        return WorkerSpec(
            model_name=model.name, worker_id=worker_id, handler=model.handler, model_dir=model.model_dir,
            config=config.as_yaml_dict(), nproc=config.nproc, gpus=gpus,
            torchrun_args=self._torchrun_args(config), env=self._worker_env(config, gpus),
            run_dir=self.run_dir, log_dir=self._log_dir(model.name, model.version, worker_id),
            startup_timeout=config.startupTimeout)

    def _log_dir(self, name: str, version: str, worker_id: int) -> str:
        return os.path.join(self.run_dir, "logs", name, f"v{version}", f"w{worker_id}")

    def _dry_run(self, request: dict, plan: dict[int, list[int]]) -> dict:
        config = request["config"]
        args = self._torchrun_args(config)
        workers = []
        for wid, gpus in sorted(plan.items()):
            command = [sys.executable, "-m", "torch.distributed.run", *args, "-m", "lmjupyter.worker.main", "SPEC"]
            workers.append({"id": wid, "devices": ",".join(map(str, gpus)), "command": command,
                            "env": {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
                                    "OMP_NUM_THREADS": str(config.torchrun.omp_number_threads)}})
        return {"name": request["name"], "dry_run": True, "handler": request["handler"],
                "model_dir": request["model_dir"], "config": config.as_yaml_dict(),
                "warnings": request["warnings"],
                "plan": {"device_type": config.deviceType, "nproc_per_node": config.nproc, "workers": workers}}

    # ---- scale and undeploy -----------------------------------------------------------------
    async def scale(self, name: str, body: Any) -> dict:
        model = self.model(name)
        count = body.get("workers") if isinstance(body, dict) else None
        if not isinstance(count, int) or isinstance(count, bool):
            raise ApiError(400, 'scale body must be {"workers": N} with an integer N', key="workers")
        low, high = model.config.minWorkers, model.config.maxWorkers
        if not low <= count <= high:
            raise ApiError(400, f"workers = {count}: expected {low}..{high} (minWorkers..maxWorkers)", key="workers")
        if model.state != ModelState.READY:
            raise ApiError(409, f"model {name} is {model.state.value}; only a ready model can be scaled")
        new_ids = []
        next_id = max(model.workers, default=0) + 1
        while len(model.workers) + len(new_ids) < count:
            new_ids.append(next_id)
            next_id += 1
        plan = self._plan_gpus(name, model.config, new_ids, own=model.gpus)
        await model.scale(count, plan)
        return model.describe()

    async def undeploy(self, name: str) -> dict:
        model = self.model(name)
        description = model.describe()
        await model.stop()
        if self._models.get(name) is model:
            del self._models[name]
        self.metrics.remove(name)
        self._changed()
        description["state"] = "stopped"
        description["workers"] = []
        return description

    async def shutdown(self) -> None:
        """End every worker group of every model; used when the server stops."""
        await asyncio.gather(*(m.stop() for m in self._models.values()), return_exceptions=True)
        self._models.clear()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()
