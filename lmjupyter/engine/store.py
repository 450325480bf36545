"""The model store folder and the registry snapshot that brings models back after a restart.

    <model store>/
      registry.json                  every deployed model version: its deploy, worker count, default
      registry.json.damaged-<time>   a snapshot that could not be restored in full, kept for the user
      .lmjupyter/unpacked/           archives unpacked for deploys (reused while an archive is unchanged)
      .lmjupyter/requirements/<name>/<version>/   a model's requirements (pip install --target)
      .lmjupyter/lock                held by the one server using the store

Every change of the registry (deploy, scale, undeploy, a new default version)
rewrites registry.json atomically: temp file, fsync, rename, fsync of the folder.
Only a changed snapshot is written, and requests never cause a write. On start,
:meth:`ModelStore.restore` deploys every recorded version again with its
config, worker count and default flag. What cannot come back (a damaged file,
a model whose files are gone) is logged and listed in ``engine.restore_errors``;
it never stops the server. Without a model store, unpacked archives and
requirements live in the server's private run directory and nothing is recorded.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time

from lmjupyter import __version__
from lmjupyter.archive.manifest import ArchiveError
from lmjupyter.archive.requirements import RequirementsError, install_requirements
from lmjupyter.archive.unpack import UnpackedArchive, UnpackLimits, open_archive
from lmjupyter.engine.states import ModelState
from lmjupyter.errors import ApiError

log = logging.getLogger("lmjupyter")
REGISTRY = "registry.json"
FORMAT = "lmjupyter-registry"


class ModelStore:
    def __init__(self, path: str | None, run_dir: str, limits: UnpackLimits = UnpackLimits()):
        self.path = path
        self.limits = limits
        private = os.path.join(path, ".lmjupyter") if path else run_dir
        self.unpack_root = os.path.join(private, "unpacked")
        self.requirements_root = os.path.join(private, "requirements")
        self.registry_path = os.path.join(path, REGISTRY) if path else None
        self.recording = False      # True while this server owns the store's registry
        self.problem: str | None = None
        self.pending: dict[tuple[str, str], dict] = {}  # snapshot entries not yet deployed again
        self._last_written: str | None = None
        self._lock_fd: int | None = None
        self._used: set[str] = set()  # unpacked and requirement folders deploys of this server used
        if path:
            self._lock(private)
        if self.recording:
            self._remove_interrupted_unpacks()

    # ---- archives and requirements -------------------------------------------------------------
    async def open_archive(self, path: str) -> UnpackedArchive:
        """Unpack (in a thread: archives may be gigabytes) or open in place; 400 when unusable."""
        try:
            archive = await asyncio.to_thread(open_archive, path, self.unpack_root, self.limits)
        except ArchiveError as exc:
            raise ApiError(400, f"archive: {exc}", key="archive") from None
        self._used.add(os.path.realpath(archive.model_dir))
        return archive

    async def install_requirements(self, requirements: str, name: str, version: str, cwd: str) -> str:
        """The folder to put on the ranks' PYTHONPATH; 400 with pip's output when it fails."""
        target = os.path.join(self.requirements_root, name, version)
        self._used.add(os.path.realpath(target))
        try:
            return await install_requirements(requirements, target, cwd=cwd)
        except RequirementsError as exc:
            raise ApiError(400, str(exc), key="install_requirements") from None

    def collect_garbage(self) -> None:
        """Remove unpacked archives and requirement folders no deploy of this server has used."""
        for root, depth in ((self.unpack_root, 1), (self.requirements_root, 2)):
            for folder in _folders(root, depth):
                real = os.path.realpath(folder)  # a used model dir may be a subfolder (TorchServe's tgz)
                if not any(os.path.commonpath([used, real]) == real for used in self._used):
                    log.info("removing unused %s", folder)
                    shutil.rmtree(folder, ignore_errors=True)

    def _remove_interrupted_unpacks(self) -> None:
        """``.unpacking-*`` folders of a server that died mid-unpack (none can be running: we hold the lock)."""
        if os.path.isdir(self.unpack_root):
            for child in os.listdir(self.unpack_root):
                if child.startswith(".unpacking-"):
                    log.info("removing %s, left by an unpack that was interrupted", child)
                    shutil.rmtree(os.path.join(self.unpack_root, child), ignore_errors=True)

    def _lock(self, private: str) -> None:
        """One server per store: two would overwrite each other's registry."""
        os.makedirs(private, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(private, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            self.problem = (f"model store {self.path} is in use by another lmjupyter server (pid {holder}); "
                            "this server neither restores nor records models there")
            return  # lmjupyter serve stops with this line; in Jupyter, restore() logs and lists it
        except OSError as exc:  # a file system without locks (some NFS mounts): record, unguarded
            log.warning("cannot lock the model store %s (%s); no other server may use it", self.path, exc)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd, self.recording = fd, True

    def close(self) -> None:
        """Stop recording (the server is stopping: its models must stay in the snapshot)."""
        self.recording = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- writing --------------------------------------------------------------------------------
    def save(self, engine) -> None:
        """Engine listener: rewrite the snapshot if what it records changed."""
        if not self.recording:
            return
        text = json.dumps(self._snapshot(engine), indent=1, sort_keys=True) + "\n"
        if text == self._last_written:
            return
        try:
            _atomic_write(self.registry_path, text.encode())
        except OSError as exc:
            log.error("cannot write the registry snapshot %s: %s", self.registry_path, exc)
            return
        self._last_written = text

    def _snapshot(self, engine) -> dict:
        entries = {}
        for model in engine.models():
            if model.state == ModelState.STOPPING or not model.source:
                continue
            entries[(model.name, model.version)] = {
                "name": model.name, "version": model.version, "workers": model.target,
                "default": engine.default_version(model.name) == model.version, "deploy": model.source}
        for key, entry in self.pending.items():
            entries.setdefault(key, entry)
        return {"format": FORMAT, "formatVersion": 1, "lmjupyterVersion": __version__,
                "models": [entries[key] for key in sorted(entries)]}

    # ---- restoring ------------------------------------------------------------------------------
    def read(self) -> tuple[list[dict], list[dict], bytes]:
        """The snapshot's good entries, the problems found, and the raw bytes (kept if damaged)."""
        if not self.registry_path or not os.path.exists(self.registry_path):
            return [], [], b""
        raw = b""
        try:
            with open(self.registry_path, "rb") as f:
                raw = f.read()
            data = json.loads(raw)
        except (OSError, ValueError) as exc:
            return [], [{"message": f"{self.registry_path} cannot be read ({type(exc).__name__}: {exc}); "
                                    "no model was restored from it"}], raw
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("models"), list):
            return [], [{"message": f"{self.registry_path} is not an lmjupyter registry snapshot; "
                                    "no model was restored from it"}], raw
        entries, errors, seen = [], [], set()
        for index, entry in enumerate(data["models"]):
            problem = _entry_problem(entry)
            key = (entry.get("name"), entry.get("version")) if isinstance(entry, dict) else None
            if problem is None and key in seen:
                problem = "recorded twice"
            if problem:
                errors.append({"name": key and key[0], "version": key and key[1],
                               "message": f"{self.registry_path}: models[{index}]: {problem}"})
                continue
            seen.add(key)
            entries.append(entry)
        return entries, errors, raw

    async def restore(self, engine) -> None:
        """Deploy every recorded version again; report (never raise) what cannot come back."""
        if not self.recording:
            if self.problem:
                log.error(self.problem)
                engine.restore_errors.append({"message": self.problem})
            return
        entries, errors, raw = self.read()
        self.pending = {(e["name"], e["version"]): e for e in entries}
        if entries:
            log.info("restoring %d model version(s) from %s", len(entries), self.registry_path)
        results = await asyncio.gather(*(self._restore_one(engine, e) for e in entries))
        errors += [error for error in results if error]
        for error in errors:
            log.error("restore: %s", error["message"])
        engine.restore_errors.extend(errors)
        self.collect_garbage()
        if errors and raw:
            kept = f"{self.registry_path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
            _atomic_write(kept, raw)
            for error in errors:
                error["snapshot_kept_at"] = kept
        self.save(engine)

    async def _restore_one(self, engine, entry: dict) -> dict | None:
        name, version = entry["name"], entry["version"]
        body = {**entry["deploy"], "name": name, "version": version, "wait": True}
        try:
            await engine.deploy(body, target_workers=entry["workers"], default=entry.get("default"))
            return None
        except ApiError as exc:
            return {"name": name, "version": version, "status": exc.status,
                    "message": f"model {name} version {version} was not restored: {exc}"}
        except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the others
            return {"name": name, "version": version,
                    "message": f"model {name} version {version} was not restored: {type(exc).__name__}: {exc}"}
        finally:
            self.pending.pop((name, version), None)


def _entry_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return "expected an object"
    for key, kind in (("name", str), ("version", str), ("deploy", dict), ("workers", int)):
        if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
            return f"{key} is missing or not a {kind.__name__}"
    if entry["workers"] < 0:
        return "workers is negative"
    return None


def _folders(root: str, depth: int) -> list[str]:
    """Folders ``depth`` levels below ``root``, leaving out hidden ones (unpacks in progress)."""
    level = [root]
    for _ in range(depth):
        level = [os.path.join(parent, child) for parent in level if os.path.isdir(parent)
                 for child in sorted(os.listdir(parent)) if not child.startswith(".")
                 and os.path.isdir(os.path.join(parent, child))]
    return level


def _atomic_write(path: str, data: bytes) -> None:
    """Readers see the old file or the new one, never a part, even after a crash."""
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
