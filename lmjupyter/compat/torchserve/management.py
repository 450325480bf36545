"""TorchServe's management API over the engine: register, scale, describe, list, unregister, set-default.

Each function takes the engine and the call's parameters (TorchServe's names and
defaults) and returns ``(status, body)`` with TorchServe's bodies, or raises
:class:`~lmjupyter.errors.ApiError` whose ``ts_type`` detail names TorchServe's
exception type. ``url`` is a local archive path inside the allowed roots, relative
to the model store when it is there (as TorchServe's ``model_store``): a URL is
refused and nothing is ever fetched.
"""
from __future__ import annotations

import asyncio
import os
import re
import time

import yaml

from lmjupyter.engine.states import ModelState, WorkerState
from lmjupyter.errors import ApiError

URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_background: set[asyncio.Task] = set()  # asynchronous scale-ups (synchronous=false) still running


def _error(status: int, message: str, ts_type: str) -> ApiError:
    return ApiError(status, message, ts_type=ts_type)


def _int(params: dict, key: str, default: int) -> int:
    """TorchServe's getIntParameter: a missing or malformed value means the default."""
    try:
        return int(params[key])
    except (KeyError, TypeError, ValueError):
        return default


def _bool(params: dict, key: str, default: bool) -> bool:
    value = params.get(key)
    return default if value is None else str(value).strip().lower() == "true"


def find_model(engine, name: str, version: str | None = None):
    try:
        return engine.model(name, version)
    except ApiError:
        if version is not None and engine.versions(name):
            raise _error(404, f"Model version: {version} does not exist for model: {name}",
                         "ModelVersionNotFoundException") from None
        raise _error(404, f"Model not found: {name}", "ModelNotFoundException") from None


# ---- inference API: ping ---------------------------------------------------------------------
def ping(engine) -> tuple[int, dict]:
    """Healthy when every model's default version runs at least its minWorkers."""
    for name in sorted({m.name for m in engine.models()}):
        model = engine.model(name)
        running = sum(1 for w in model.workers.values() if w.state in (WorkerState.READY, WorkerState.BUSY))
        if running < model.config.minWorkers or model.state == ModelState.FAILED:
            return 500, {"status": "Unhealthy"}
    return 200, {"status": "Healthy"}


# ---- register ----------------------------------------------------------------------------------
def _archive_path(engine, url) -> str:
    if not url:
        raise _error(400, "Parameter url is required.", "BadRequestException")
    url = str(url)
    if URL_SCHEME.match(url):
        raise _error(400, f"url = {url!r}: only a local model archive inside the allowed roots is accepted; "
                          "lmjupyter never downloads models", "BadRequestException")
    store = engine.settings.model_store
    if store and not os.path.isabs(url) and os.path.exists(os.path.join(store, url)):
        return os.path.join(store, url)  # TorchServe reads url relative to its model store
    return url


def _archive_config(archive) -> dict:
    if isinstance(archive.config, dict):
        return dict(archive.config)
    try:
        data = yaml.safe_load(archive.config) if archive.config else {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


async def register(engine, params: dict) -> tuple[int, dict]:
    """``POST /models?url=...``: deploy an archive with TorchServe's parameters and precedence."""
    path = _archive_path(engine, params.get("url"))
    runtime = str(params.get("runtime") or "python").lower()
    if runtime not in ("python", "python3"):
        raise _error(400, f"runtime {runtime!r}: only python handlers run here", "BadRequestException")
    archive = await engine.open_archive(path, key="url")
    config = _archive_config(archive)
    overrides = {}
    for key, name in (("batch_size", "batchSize"), ("max_batch_delay", "maxBatchDelay")):
        if _int(params, key, -1) > 0:  # the call's value wins over the archive's
            overrides[name] = _int(params, key, -1)
    for key, name in (("response_timeout", "responseTimeout"), ("startup_timeout", "startupTimeout")):
        if _int(params, key, -1) > 0 and not (isinstance(config.get(name), int) and config[name] > 0):
            overrides[name] = _int(params, key, -1)  # the archive's value wins over the call's
    low, high = config.get("minWorkers"), config.get("maxWorkers", config.get("minWorkers"))
    if isinstance(low, int) and low > 0 and isinstance(high, int) and high >= low:
        workers = low  # the archive's model-config.yaml wins, as in TorchServe
    else:
        workers = max(0, _int(params, "initial_workers", 0))
    synchronous = _bool(params, "synchronous", True)
    body = {"archive": path, "workers": workers, "wait": synchronous and workers > 0}
    if overrides:
        body["config"] = {**config, **overrides}
    if params.get("model_name"):
        body["name"] = str(params["model_name"])
    if params.get("handler"):
        body["handler"] = str(params["handler"])
    try:
        described = await engine.deploy(body)
    except ApiError as exc:
        if exc.status == 409:
            raise _error(409, str(exc), "ConflictStatusException") from None
        failed = exc.detail.get("model")
        if exc.status == 500 and failed:  # TorchServe unregisters a model whose workers failed to start
            await engine.undeploy(failed["name"], failed["version"])
            raise _error(500, f"Failed to start workers for model {failed['name']} version: {failed['version']}: "
                              f"{exc}", "InternalServerException") from None
        raise
    name, version = described["name"], described["version"]
    if workers == 0:
        return 200, {"status": f'Model "{name}" Version: {version} registered with 0 initial workers. '
                               "Use scale workers API to add workers for the model."}
    if not synchronous:
        return 202, {"status": "Processing worker updates..."}
    return 200, {"status": f'Model "{name}" Version: {version} registered with {workers} initial workers'}


# ---- scale, unregister, set-default ------------------------------------------------------------
async def scale(engine, name: str, version: str | None, params: dict) -> tuple[int, dict]:
    """``PUT /models/{m}[/{v}]?min_worker=&max_worker=&synchronous=``: set the bounds, run min_worker."""
    low = _int(params, "min_worker", 1)
    high = _int(params, "max_worker", low)
    version = version or params.get("model_version")
    if high < low:
        raise _error(400, "max_worker cannot be less than min_worker.", "BadRequestException")
    if low < 0:
        raise _error(400, "min_worker cannot be negative.", "BadRequestException")
    model = find_model(engine, name, version)
    work = asyncio.ensure_future(engine.scale(name, {"workers": low}, model.version, bounds=(low, high)))
    if not _bool(params, "synchronous", False):
        await asyncio.sleep(0)  # engine.scale checks everything before its first await: refusals surface now
        if work.done():
            work.result()
        _background.add(work)
        work.add_done_callback(_background.discard)
        return 202, {"status": "Processing worker updates..."}
    try:
        await work
    except ApiError as exc:
        if exc.status == 409:
            raise _error(503, str(exc), "ServiceUnavailableException") from None
        raise
    running = sum(1 for w in model.workers.values() if w.state in (WorkerState.READY, WorkerState.BUSY))
    if running < low:
        return 206, {"status": "Workers scaling in progress..."}
    message = f"Workers scaled to {low} for model: {name}"
    return 200, {"status": message + (f", version: {version}" if version else "")}


async def unregister(engine, name: str, version: str | None) -> tuple[int, dict]:
    """``DELETE /models/{m}[/{v}]``: one version (the default when none is named)."""
    model = find_model(engine, name, version)
    if len(engine.versions(name)) > 1 and engine.default_version(name) == model.version:
        raise _error(403, f"Cannot remove default version for model {name}", "InvalidModelVersionException")
    await engine.undeploy(name, model.version)
    return 200, {"status": f'Model "{name}" unregistered'}


def set_default(engine, name: str, version: str) -> tuple[int, dict]:
    find_model(engine, name)
    if version not in engine.versions(name):
        raise _error(404, f"Model version {version} does not exist for model {name}", "ModelVersionNotFoundException")
    engine.set_default(name, version)
    return 200, {"status": f'Default version successfully updated for model "{name}" to "{version}"'}


# ---- list and describe -------------------------------------------------------------------------
def _model_url(model) -> str:
    archive = model.source.get("archive")
    return os.path.basename(archive) if archive else os.path.basename(str(model.handler))


def list_models(engine, params: dict) -> tuple[int, dict]:
    """``GET /models?limit=&next_page_token=``: the default version of each model, by name."""
    limit = _int(params, "limit", 100)
    limit = 100 if limit > 100 or limit < 0 else limit
    start = max(0, _int(params, "next_page_token", 0))
    names = sorted({m.name for m in engine.models()})
    out: dict = {}
    end = start + limit
    if end > len(names):
        end = len(names)
    else:
        out["nextPageToken"] = str(end)  # TorchServe sets it also when the page ends exactly at the last model
    out["models"] = [{"modelName": n, "modelUrl": _model_url(engine.model(n))} for n in names[start:end]]
    return 200, out


def describe(engine, name: str, version: str | None) -> tuple[int, list]:
    """``GET /models/{m}[/{v}|/all]``: a list of TorchServe's model descriptions."""
    if version == "all":
        find_model(engine, name)
        models = [engine.model(name, v) for v in engine.versions(name)]
    else:
        models = [find_model(engine, name, version)]
    return 200, [_description(m) for m in models]


def _description(model) -> dict:
    config = model.config
    out = {
        "modelName": model.name, "modelVersion": model.version, "modelUrl": _model_url(model), "runtime": "python",
        "minWorkers": config.minWorkers, "maxWorkers": config.maxWorkers, "batchSize": config.batchSize,
        "maxBatchDelay": config.maxBatchDelay, "responseTimeout": config.responseTimeout,
        "startupTimeout": config.startupTimeout, "maxRetryTimeoutInSec": 300, "clientTimeoutInMills": 0,
        "parallelType": config.parallelType or "", "parallelLevel": config.nproc if config.parallelType else 0,
        "deviceType": config.deviceType or "cpu",
    }
    if config.deviceIds:
        out["deviceIds"] = list(config.deviceIds)
    out.update({
        "continuousBatching": bool(config.continuousBatching), "useJobTicket": config.useJobTicket, "useVenv": False, "stateful": False,
        "sequenceMaxIdleMSec": 0, "sequenceTimeoutMSec": 0, "maxNumSequence": 0, "maxSequenceJobQueueSize": 0,
        "loadedAtStartup": False,
        "workers": [_worker(w) for _, w in sorted(model.workers.items())],
        "jobQueueStatus": {"remainingCapacity": max(0, config.jobQueueSize - model.queue_depth),
                           "pendingRequests": model.queue_depth},
    })
    return out


def _worker(worker) -> dict:
    ranks = sorted(getattr(worker, "ranks", {}).values(), key=lambda link: link.rank)
    started = time.time() - (time.monotonic() - getattr(worker, "started_at", time.monotonic()))
    devices = worker.spec.devices if hasattr(worker, "spec") else ""
    return {"id": str(worker.id),
            "startTime": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)) + f".{int(started * 1000) % 1000:03d}Z",
            "status": "READY" if worker.state in (WorkerState.READY, WorkerState.BUSY) else "UNLOADING",
            "memoryUsage": sum(_rss(link.pid) for link in ranks), "pid": ranks[0].pid if ranks else -1,
            "gpu": bool(devices), "gpuUsage": "N/A"}


def _rss(pid: int) -> int:
    """Resident bytes of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
