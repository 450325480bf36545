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
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import lmjupyter
from lmjupyter.archive.manifest import VERSION_PATTERN
from lmjupyter.archive.unpack import UnpackLimits
from lmjupyter.config import ConfigError, ModelConfig, load_config
from lmjupyter.engine.launcher import ColdLauncher, ForkServerLauncher
from lmjupyter.engine.metrics import EngineMetrics
from lmjupyter.engine.model import ServedModel
from lmjupyter.engine.spares import SparePool
from lmjupyter.engine.states import ModelState
from lmjupyter.engine.store import ModelStore
from lmjupyter.engine.worker_group import WorkerSpec, read_tail
from lmjupyter.errors import ApiError
from lmjupyter.gpus import GpuAllocationError, GpuAllocator, Holder
from lmjupyter.nodes import multinode
from lmjupyter.nodes.registry import NodeRegistry

log = logging.getLogger("lmjupyter")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
BUILTIN_CAUSAL_LM = "lmjupyter.handlers.causal_lm:CausalLMHandler"
DEFAULT_LLM_SLOTS = 16  # batchSize of the built-in causal-LM handler when the config does not say
DEPLOY_KEYS = {"name", "handler", "model_dir", "archive", "config", "config_file", "wait", "dry_run",
               "workers", "version", "install_requirements"}
# Besides torch: the Hugging Face stack, when installed (a failed import is logged, not fatal),
# in two steps of ~2 s each here, since a launch asked for meanwhile waits for the step under way.
DEFAULT_PRELOAD = ["torch.distributed.pipelining", "lmjupyter.worker.preload_hf"]
RESERVED_TORCHRUN_KEYS = {"no-python", "no_python", "module", "m", "run-path", "run_path", "standalone"}


@dataclass
class EngineSettings:
    root_dir: str = "."
    model_store: str | None = None
    gpus: list[int] = field(default_factory=list)
    allowed_roots: list[str] = field(default_factory=list)
    install_requirements: bool = False  # default of the deploy key: pip-install archives' requirements
    warm_spares: int = 0  # torchrun groups kept started with torch imported (engine/spares.py)
    fork_server: bool = True  # start workers from a process with torch imported (engine/launcher.py)
    preload: list[str] | None = None  # modules the fork server imports besides torch; None: DEFAULT_PRELOAD
    # Several hosts (lmjupyter/nodes/): this host's address for agents' ranks and torchrun's rendezvous,
    # the TCP port ranks on other hosts connect to (0: a free one), and when a quiet agent counts as lost.
    node_address: str = "127.0.0.1"
    node_port: int = 0
    node_timeout: float = 10.0
    archive_limits: UnpackLimits = field(default_factory=UnpackLimits)  # zip and tar bombs


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
        self._models: dict[tuple[str, str], ServedModel] = {}  # by (name, version)
        self._defaults: dict[str, str] = {}  # name -> the version /models/{name} means
        self._starting: set[asyncio.Task] = set()
        self.restore_errors: list[dict] = []  # snapshot entries that could not come back
        self.store = ModelStore(settings.model_store, self.run_dir, settings.archive_limits)
        if not settings.model_store:  # archives then unpack into the private run directory
            self.allowed_roots.append(os.path.realpath(self.store.unpack_root))
        self.listeners.append(lambda: self.store.save(self))
        self._restoring: asyncio.Task | None = None
        self.spares = SparePool(settings.warm_spares, self.run_dir) if settings.warm_spares > 0 else None
        preload = DEFAULT_PRELOAD if settings.preload is None else settings.preload
        self.launcher = (ForkServerLauncher(self._base_env(), os.path.join(self.run_dir, "forkserver.log"), preload)
                         if settings.fork_server else ColdLauncher())
        self.nodes = NodeRegistry(socket.gethostname(), socket.gethostname(), settings.node_address,
                                  self.allocator.gpus, port=settings.node_port, timeout=settings.node_timeout)

    # ---- queries ----------------------------------------------------------------------------
    def model(self, name: str, version: str | None = None) -> ServedModel:
        """A version of a model; its default version when ``version`` is None."""
        model = self._models.get((name, self._defaults.get(name) if version is None else str(version)))
        if model is None:
            versions = self.versions(name)
            if versions:
                raise ApiError(404, f"model {name!r} has no version {version!r} (versions: {', '.join(versions)})")
            raise ApiError(404, f"no model named {name!r} is deployed")
        return model

    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    def versions(self, name: str) -> list[str]:
        return [version for (n, version) in self._models if n == name]

    def default_version(self, name: str) -> str | None:
        return self._defaults.get(name)

    def describe(self, name: str, version: str | None = None) -> dict:
        """A version's description (the default's when None), with all ``versions`` of the name."""
        out = self.describe_model(self.model(name, version))
        out["default_version"] = self._defaults.get(name)
        out["versions"] = [{"version": m.version, "state": m.state.value, "target_workers": m.target,
                            "default": self._defaults.get(name) == m.version}
                           for (n, _), m in self._models.items() if n == name]
        return out

    def describe_model(self, model: ServedModel) -> dict:
        """``model.describe()`` plus whether it is its name's ``default`` and the ``archive`` it came from."""
        out = model.describe()
        out["default"] = self._defaults.get(model.name) == model.version
        out["archive"] = model.source.get("archive")
        return out

    def set_default(self, name: str, version: str) -> dict:
        """Make ``version`` the one that /models/{name} (and its predict route) means."""
        self._defaults[name] = self.model(name, version).version
        self._changed()
        return self.describe(name)

    def restore(self) -> asyncio.Task:
        """Start bringing back the models of the store's registry snapshot (once; needs a running loop)."""
        if self._restoring is None:
            self._restoring = asyncio.ensure_future(self.store.restore(self))
        return self._restoring

    def events(self, name: str, after: int = 0, version: str | None = None) -> dict:
        """A version's start-up events with ``seq`` > ``after`` (worker starts and the ranks'
        phases, in the order they happened), for ``%lmserve deploy`` and the panels."""
        model = self.model(name, version)
        events = [e for e in model.events if e["seq"] > after]
        return {"name": model.name, "version": model.version, "state": model.state.value,
                "events": events, "last": events[-1]["seq"] if events else after}

    def describe_gpus(self) -> list[dict]:
        """This host's GPUs and every agent's, each with its ``node``."""
        self.allocator.held = self._held_gpus()
        return ([{**gpu, "node": self.nodes.local.name} for gpu in self.allocator.describe()]
                + [{**gpu, "node": node.name} for node in self.nodes.agents.values() for gpu in node.describe()["gpus"]])

    def describe_nodes(self) -> list[dict]:
        """This host (node 0 of every worker) and the agents; what ``GET /nodes`` answers."""
        return multinode.describe_nodes(self)

    def logs(self, name: str, rank: int | None = None, tail: int = 100, version: str | None = None) -> list[dict]:
        model = self.model(name, version)
        world = model.config.nproc * model.config.nnodes  # ranks on every host of the group
        if rank is not None and not 0 <= rank < world:
            raise ApiError(400, f"rank = {rank}: model {name} has ranks 0..{world - 1}", key="rank")
        out = []
        for worker_id in sorted(model.workers):
            log_dir = self._log_dir(model.name, model.version, worker_id)
            ranks = [rank] if rank is not None else range(world)
            for r in ranks:
                text = read_tail(os.path.join(log_dir, f"rank{r}.log"), tail)
                out.append({"worker": worker_id, "rank": r, "lines": text.splitlines()})
        return out

    # ---- deploy -----------------------------------------------------------------------------
    async def deploy(self, body: dict, *, target_workers: int | None = None, default: bool | None = None) -> dict:
        """Validate a deploy body, plan GPUs and start workers (or only plan, for a dry run).

        Versions of one name run side by side; the first deployed is the default. ``target_workers``
        and ``default`` serve the registry snapshot's restore (the count a model was scaled to).
        """
        restoring = target_workers is not None
        request = await self._parse_deploy(body)
        name, version, config = request["name"], request["version"], request["config"]
        self._refuse_duplicate(request)
        if request["requirements"] and not request["dry_run"]:
            request["python_path"].append(await self.store.install_requirements(
                request["requirements"], name, version, cwd=request["model_dir"]))
            self._refuse_duplicate(request)  # another deploy may have won while pip ran
        if target_workers is None:
            target_workers = request["workers"]
        count = config.minWorkers if target_workers is None else min(max(target_workers, config.minWorkers),
                                                                     config.maxWorkers)
        plan = self._plan_gpus((name, version), config, list(range(1, count + 1)))
        # A restore (target_workers) does not wait for agents to be back: its workers wait for them.
        node_plan = None if restoring else multinode.plan_or_refuse(self, name, config, list(plan))
        if request["dry_run"]:
            return self._dry_run(request, plan, node_plan)
        existing = self._models.get((name, version))
        default = default or self._defaults.get(name) == version  # a failed default is replaced as the default
        if existing is not None:
            await self._remove(existing)
        model = ServedModel(name, version, config, handler=request["handler"],
                            model_dir=request["model_dir"], gpu_plan=plan,
                            make_spec=lambda wid, gpus: self._worker_spec(model, wid, gpus),
                            metrics=self.metrics.for_model(name), on_change=self._changed)
        model.target = count
        model.warnings = request["warnings"]
        model.manifest, model.python_path, model.source = request["manifest"], request["python_path"], request["source"]
        for warning in model.warnings:
            log.warning("deploy %s: %s", name, warning)
        log.info("deploying %s v%s: %d worker(s) x %d rank(s) on %s", name, model.version,
                 count, config.nproc, config.deviceType)
        self._models[(name, version)] = model
        if default or name not in self._defaults:
            self._defaults[name] = version
        self._changed()
        task = asyncio.ensure_future(model.start())
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)
        if request["wait"]:
            await asyncio.shield(task)
            if model.state == ModelState.FAILED:
                raise ApiError(500, model.error["message"], traceback=model.error.get("traceback"),
                               model=self.describe_model(model))
        return self.describe_model(model)

    def _refuse_duplicate(self, request: dict) -> None:
        existing = self._models.get((request["name"], request["version"]))
        if existing is not None and existing.state != ModelState.FAILED and not request["dry_run"]:
            raise ApiError(409, f"model {request['name']!r} version {request['version']!r} is already deployed "
                                f"({existing.state.value}); undeploy it first, or deploy another version")

    async def _parse_deploy(self, body: Any) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "deploy body must be a JSON object")
        unknown = sorted(set(body) - DEPLOY_KEYS)
        if unknown:
            raise ApiError(400, f"unknown deploy key(s) {unknown}; expected some of {sorted(DEPLOY_KEYS)}",
                           key=unknown[0])
        for key in ("wait", "dry_run", "install_requirements"):
            if not isinstance(body.get(key, False), bool):
                raise ApiError(400, f"{key} = {body[key]!r}: expected true or false", key=key)
        archive = None
        if body.get("archive") is not None:
            if body.get("model_dir") is not None:
                raise ApiError(400, "give model_dir or archive, not both", key="archive")
            archive = await self.open_archive(body["archive"])
            model_dir = archive.model_dir
        else:
            model_dir = self._checked_path(body.get("model_dir"), "model_dir", directory=True)
        name = body.get("name")
        if name is None and archive is not None:  # TorchServe's rule: the archive's own model name
            name = archive.manifest["model"].get("modelName")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ApiError(400, f"name = {name!r}: expected 1-64 letters, digits, '.', '_' or '-'"
                                + ("" if archive is None else " (the archive's modelName when not given)"), key="name")
        handler = self._resolve_handler(body.get("handler") or (archive and archive.handler), model_dir)
        config, warnings = self._load_deploy_config(body, model_dir, archive)
        workers = body.get("workers")
        if workers is not None:
            if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
                raise ApiError(400, f"workers = {workers!r}: expected an integer >= 0", key="workers")
            # The count to start with (TorchServe's initial_workers): the bounds widen to hold it,
            # so a model deployed with 2 workers can still be scaled down to its config's minWorkers.
            config = config.model_copy(update={"minWorkers": min(workers, config.minWorkers),
                                               "maxWorkers": max(workers, config.maxWorkers)})
        if config.deviceType is None:
            config = config.model_copy(update={"deviceType": "gpu" if self.allocator.gpus else "cpu"})
        if handler == BUILTIN_CAUSAL_LM and "batchSize" not in config.model_fields_set:
            # its batchSize is the number of sequences decoded together (KV-cache slots)
            config = config.model_copy(update={"batchSize": DEFAULT_LLM_SLOTS})
        given = body.get("version")
        if given is not None and not (isinstance(given, str) or
                                      (isinstance(given, int) and not isinstance(given, bool) and given >= 0)):
            raise ApiError(400, f"version = {body['version']!r}: expected a string (or a whole number)", key="version")
        version = str(body["version"] if body.get("version") is not None else (archive and archive.version) or "1")
        if not VERSION_PATTERN.match(version):
            raise ApiError(400, f"version = {version!r}: expected 1-64 letters, digits, '.', '_', '+' or '-'",
                           key="version")
        install = body.get("install_requirements", self.settings.install_requirements)
        requirements = archive.requirements if archive else None
        if requirements and not install:
            warnings.append(f"the archive lists requirements ({os.path.basename(requirements)}) that were not "
                            "installed; deploy with install_requirements: true (or serve --install-requirements)")
        # What the registry snapshot records to deploy this again after a restart.
        source = {"handler": handler if body.get("handler") or not archive else None,
                  "model_dir": None if archive else model_dir, "archive": archive and archive.source,
                  "config": config.as_yaml_dict(other_sections=True),
                  "install_requirements": install if requirements else None}
        return {"name": name, "handler": handler, "model_dir": model_dir or self.root_dir, "config": config,
                "warnings": (archive.warnings if archive else []) + warnings, "wait": body.get("wait", False),
                "dry_run": body.get("dry_run", False), "version": version, "workers": workers,
                "requirements": requirements if install else None,
                "manifest": archive.manifest if archive else {},
                "python_path": list(archive.python_path) if archive else [],
                "source": {k: v for k, v in source.items() if v is not None}}

    async def open_archive(self, value: Any, key: str = "archive"):
        """Unpack (or reuse) an archive inside the allowed roots; 400/403 naming ``key``."""
        return await self.store.open_archive(self._checked_path(value, key))

    def _load_deploy_config(self, body: dict, model_dir: str | None, archive=None) -> tuple[ModelConfig, list[str]]:
        config, config_file = body.get("config"), body.get("config_file")
        if config is not None and config_file is not None:
            raise ApiError(400, "give config or config_file, not both", key="config")
        if config is not None and not isinstance(config, (dict, str)):
            raise ApiError(400, "config: expected a mapping of model-config keys (or YAML text)", key="config")
        filename = "config"
        if config_file is None and config is None and archive is not None and archive.config is not None:
            config, filename = archive.config, archive.config_name
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
        if not isinstance(value, str) or not value or "\0" in value:
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
    def _held_gpus(self, excluding: tuple[str, str] | None = None) -> dict[int, Holder]:
        return {gpu: Holder(m.name, wid) for key, m in self._models.items() if key != excluding
                for wid, gpus in m.gpus.items() for gpu in gpus}

    def _plan_gpus(self, key: tuple[str, str], config: ModelConfig, worker_ids: list[int],
                   own: dict[int, list[int]] | None = None) -> dict[int, list[int]]:
        if config.deviceType != "gpu":
            return {wid: [] for wid in worker_ids}
        name = key[0]
        held = self._held_gpus(excluding=key)
        for wid, gpus in (own or {}).items():
            held.update({gpu: Holder(name, wid) for gpu in gpus})
        self.allocator.held = held
        try:
            return self.allocator.plan(name, worker_ids, config.nproc, config.deviceIds)
        except GpuAllocationError as exc:
            raise ApiError(400, str(exc), key="deviceIds" if config.deviceIds else "torchrun.nproc-per-node") from None

    def _torchrun_args(self, config: ModelConfig) -> list[str]:
        extra = config.torchrun.passthrough()
        reserved = RESERVED_TORCHRUN_KEYS | (multinode.RESERVED_KEYS if config.nnodes > 1 else set())
        bad = sorted(reserved & set(extra))
        if bad:
            raise ApiError(400, f"torchrun.{bad[0]} is set by lmjupyter and cannot be given", key=f"torchrun.{bad[0]}")
        if config.nnodes > 1:  # the per-node rendezvous arguments come at each start (nodes/launch.py)
            args = ["--nnodes", str(config.nnodes)]
        elif {"rdzv-endpoint", "rdzv_endpoint"} & set(extra):
            args = []
        else:
            args = ["--standalone", "--nnodes", "1"]
        args += ["--nproc-per-node", str(config.nproc)]
        if not {"monitor-interval", "monitor_interval"} & set(extra):
            args += ["--monitor-interval", "0.1"]  # the default 5 s delays every exit by seconds
        for key, value in extra.items():
            if value is True:
                args.append(f"--{key}")
            elif value not in (False, None):
                args += [f"--{key}", str(value)]
        return args

    def _base_env(self, extra_paths=()) -> dict[str, str]:
        """The server's environment for our children: this lmjupyter first on the path, no token."""
        env = dict(os.environ)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(lmjupyter.__file__)))
        # extra_paths: the model's own requirements (pip --target)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [package_parent, *extra_paths, env.get("PYTHONPATH", "")] if p)
        env.pop("TORCHELASTIC_RUN_ID", None)
        env.pop("LMJUPYTER_TOKEN", None)  # ranks never call the API; keep the secret out of handlers' reach
        return env

    def _worker_env(self, config: ModelConfig, gpus: list[int], extra_paths=()) -> dict[str, str]:
        env = self._base_env(extra_paths)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        env["OMP_NUM_THREADS"] = str(config.torchrun.omp_number_threads)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _worker_spec(self, model: ServedModel, worker_id: int, gpus: list[int]) -> WorkerSpec:
        config = model.config
        return WorkerSpec(
            model_name=model.name, worker_id=worker_id, handler=model.handler, model_dir=model.model_dir,
            config=config.as_yaml_dict(other_sections=True), nproc=config.nproc, gpus=gpus,
            torchrun_args=self._torchrun_args(config), env=self._worker_env(config, gpus, model.python_path),
            manifest=model.manifest, spares=self.spares if config.nnodes == 1 else None,
            model_version=model.version, on_metrics=model.metrics.handler_metrics,
            launcher=self.launcher,
            events=model.events,
            run_dir=self.run_dir, log_dir=self._log_dir(model.name, model.version, worker_id),
            startup_timeout=config.startupTimeout, nnodes=config.nnodes,
            remote=multinode.launch_hook(self, model, worker_id))

    def _log_dir(self, name: str, version: str, worker_id: int) -> str:
        return os.path.join(self.run_dir, "logs", name, f"v{version}", f"w{worker_id}")

    def _dry_run(self, request: dict, plan: dict[int, list[int]], node_plan: dict | None = None) -> dict:
        config = request["config"]
        args = self._torchrun_args(config)
        workers = []
        for wid, gpus in sorted(plan.items()):
            command = [sys.executable, "-m", "torch.distributed.run", *args, "-m", "lmjupyter.worker.main", "SPEC"]
            workers.append({"id": wid, "devices": ",".join(map(str, gpus)), "command": command,
                            "env": {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
                                    "OMP_NUM_THREADS": str(config.torchrun.omp_number_threads)}})
            if node_plan:
                multinode.dry_run_nodes(self, workers[-1], args, config, node_plan[wid])
        return {"name": request["name"], "dry_run": True, "handler": request["handler"],
                "model_dir": request["model_dir"], "config": config.as_yaml_dict(),
                "warnings": request["warnings"],
                "plan": {"device_type": config.deviceType, "nproc_per_node": config.nproc, "nnodes": config.nnodes,
                         "workers": workers}}

    # ---- scale and undeploy -----------------------------------------------------------------
    async def scale(self, name: str, body: Any, version: str | None = None,
                    bounds: tuple[int, int] | None = None) -> dict:
        """Start or retire worker groups; ``bounds`` (TorchServe's scale) also sets minWorkers..maxWorkers."""
        model = self.model(name, version)
        count = body.get("workers") if isinstance(body, dict) else None
        if not isinstance(count, int) or isinstance(count, bool):
            raise ApiError(400, 'scale body must be {"workers": N} with an integer N', key="workers")
        if bounds is not None and model.state == ModelState.READY:
            model.config = model.config.model_copy(update={"minWorkers": bounds[0], "maxWorkers": bounds[1]})
            if model.source:
                model.source["config"] = model.config.as_yaml_dict(other_sections=True)
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
        plan = self._plan_gpus((model.name, model.version), model.config, new_ids, own=model.gpus)
        multinode.plan_or_refuse(self, model.name, model.config, new_ids)
        await model.scale(count, plan)
        return self.describe_model(model)

    async def undeploy(self, name: str, version: str | None = None) -> dict:
        """Undeploy one version, or every version of ``name`` (the answer describes the default)."""
        if version is None:
            first = self.model(name)
            models = [first] + [m for (n, _), m in self._models.items() if n == name and m is not first]
        else:
            models = [self.model(name, version)]
            others = [v for v in self.versions(name) if v != models[0].version]
            if others and self._defaults.get(name) == models[0].version:
                raise ApiError(409, f"version {models[0].version!r} is the default of model {name!r}; make another "
                                    f"version the default first (PUT .../models/{name}/versions/{others[0]}/default), "
                                    f"or undeploy every version with DELETE .../models/{name}")
        descriptions = await asyncio.gather(*(self._remove(m) for m in models))
        description = descriptions[0]
        if version is None:
            description["versions"] = [{"version": d["version"], "state": d["state"]} for d in descriptions]
        return description

    async def _remove(self, model: ServedModel) -> dict:
        description = self.describe_model(model)
        await model.stop()
        if self._models.get((model.name, model.version)) is model:
            del self._models[(model.name, model.version)]
        remaining = self.versions(model.name)
        if not remaining:
            self._defaults.pop(model.name, None)
            self.metrics.remove(model.name)
        elif self._defaults.get(model.name) not in remaining:
            self._defaults[model.name] = remaining[0]
        self._changed()
        description["state"] = "stopped"
        description["workers"] = []
        return description

    def start_spares(self) -> None:
        """With ``warm_spares`` N: start N spares of the shape a plain deploy gets (one rank; CPU, or
        the first GPU); later ones follow the shapes of the last N worker starts. Needs the running loop."""
        if self.spares is None:
            return
        config, _ = load_config({"deviceType": "gpu" if self.allocator.gpus else "cpu"})
        gpus = self.allocator.gpus[:1] if config.deviceType == "gpu" else []
        self.spares.remember(WorkerSpec(
            model_name="spare", worker_id=0, handler="", model_dir="", config={}, nproc=config.nproc, gpus=gpus,
            torchrun_args=self._torchrun_args(config), env=self._worker_env(config, gpus), launcher=self.launcher,
            run_dir=self.run_dir, log_dir="", startup_timeout=config.startupTimeout), times=self.spares.size)

    def start_launcher(self) -> None:
        """Bring the fork server up now, so that the first deploy finds torch imported. Needs the loop."""
        self.launcher.start()

    def describe_spares(self) -> dict | None:
        return self.spares.describe() if self.spares is not None else None

    async def shutdown(self) -> None:
        """End every worker group of every model; used when the server stops."""
        if self.spares is not None:
            await self.spares.shutdown()
        self.store.close()  # the snapshot keeps the models, to bring them back on the next start
        if self._restoring is not None:
            self._restoring.cancel()
        await asyncio.gather(*(m.stop() for m in self._models.values()), return_exceptions=True)
        self._models.clear()
        await self.launcher.close()
        await self.nodes.shutdown()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()
