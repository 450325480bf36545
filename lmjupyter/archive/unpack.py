"""Open an archive for a deploy: unpack it safely into the model store, or use a folder in place.

An archive *file* (tgz or zip, whatever its extension: ``.tar.gz``, ``.zip``,
TorchServe's ``.mar``) is unpacked once into ``<unpack_root>/<stem>-<key>``,
where the key follows the file's identity (path, inode, size, mtime): deploying
it again, or restoring it after a restart, reuses the folder. Members are
checked before anything is written (no absolute paths, no ``..``, no links that
leave the folder, no devices: tarfile's ``data`` filter, and the same rules for
zip names); files are streamed and their sha256 compared with the manifest, and
bounded while they are written (:class:`UnpackLimits`: unpacked size, member
count, expansion ratio, free disk), so zip and tar bombs stop early. An
archive *folder* (``--archive-format no-archive``, or an unpacked archive) is
used where it is, so big checkpoints are never copied.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field

from lmjupyter.archive.manifest import (MANIFEST_NAME, TORCHSERVE_MANIFEST, ArchiveError, check_version,
                                        copy_hashing, handler_file, read_manifest)
from lmjupyter.compat.torchserve.archive import import_torchserve


@dataclass
class UnpackedArchive:
    """What a deploy takes from an archive; paths are absolute."""

    source: str                    # the archive file or folder the user named
    model_dir: str                 # the folder the handler sees as ctx.model_dir
    kind: str                      # "lmjupyter" or "torchserve"
    manifest: dict                 # becomes ctx.manifest
    version: str | None = None
    handler: str | None = None     # relative to model_dir, or module:Class
    config: str | dict | None = None   # model-config.yaml text (or a translated mapping)
    config_name: str = "model-config.yaml"
    requirements: str | None = None
    python_path: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class UnpackLimits:
    """How much one archive may unpack to; over any of them the unpack stops and nothing is kept.

    ``max_bytes`` and ``max_members`` are the server's ``--archive-max-size`` and
    ``--archive-max-files`` (``c.LMServe.archive_max_size``, ``archive_max_files``). Past
    ``ratio_floor`` bytes an archive may not expand to more than ``max_ratio`` times its own size
    (checkpoints barely compress; bombs expand thousands of times), and an unpack never leaves
    less than ``disk_reserve`` bytes free on the store's disk.
    """

    max_bytes: int = 64 << 30
    max_members: int = 100_000
    max_ratio: int = 200
    ratio_floor: int = 1 << 30
    disk_reserve: int = 1 << 30


class _Budget:
    """Counts members and bytes as they are written (``copy_hashing``'s progress hook)."""

    def __init__(self, path: str, dest: str, limits: UnpackLimits):
        self.path, self.limits = path, limits
        self.archive_size = max(1, os.path.getsize(path))
        self.disk_room = shutil.disk_usage(dest).free - limits.disk_reserve
        self.written = self.members = 0

    def declared(self, members: int, size: int) -> None:
        """What a zip's directory announces, checked before anything is written (the real bytes
        are counted again as they are written: declared sizes can lie)."""
        self._check_members(members)
        self._check(size, "(declared sizes)")

    def member(self, name: str, declared_size: int = 0) -> None:
        self.members += 1
        self._check_members(self.members)
        self._check(self.written + declared_size, name)

    def _check_members(self, count: int) -> None:
        if count > self.limits.max_members:
            raise ArchiveError(f"{self.path} has more than {self.limits.max_members} members, the server's limit "
                               "(lmjupyter serve --archive-max-files, c.LMServe.archive_max_files)")

    def add(self, count: int) -> None:
        self.written += count
        self._check(self.written)

    def _check(self, total: int, name: str | None = None) -> None:
        limits, what = self.limits, f" ({name})" if name else ""
        if total > limits.max_bytes:
            raise ArchiveError(f"{self.path} unpacks to more than {_size(limits.max_bytes)}{what}, the server's limit "
                               "(lmjupyter serve --archive-max-size, c.LMServe.archive_max_size)")
        if total > self.disk_room:
            raise ArchiveError(f"{self.path} unpacks to more than its disk can hold while keeping "
                               f"{_size(limits.disk_reserve)} free{what}")
        if total > limits.ratio_floor and total > limits.max_ratio * self.archive_size:
            raise ArchiveError(f"{self.path} expands to more than {limits.max_ratio} times its size of "
                               f"{_size(self.archive_size)}{what}: a zip or tar bomb? Unpack it yourself and "
                               "deploy the folder")


def _size(count: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= factor:
            return f"{count / factor:.3g} {unit}"
    return f"{count} bytes"


def open_archive(source: str, unpack_root: str, limits: UnpackLimits = UnpackLimits()) -> UnpackedArchive:
    """Unpack (or reuse) ``source`` and read its manifest. Raises :class:`ArchiveError`."""
    in_place = os.path.isdir(source)
    folder = archive_root(source if in_place else unpack(source, unpack_root, limits))
    kind, manifest = read_manifest(folder)
    model = manifest["model"]
    archive = UnpackedArchive(source, folder, kind, manifest, handler=model.get("handler"))
    if model.get("modelVersion") is not None:
        archive.version = check_version(model["modelVersion"], "modelVersion")
    if model.get("configFile"):
        archive.config_name = model["configFile"]
        with open(inside(folder, model["configFile"], "configFile"), encoding="utf-8") as f:
            archive.config = f.read()
    if model.get("requirementsFile"):
        archive.requirements = inside(folder, model["requirementsFile"], "requirementsFile")
    if kind == "torchserve":
        import_torchserve(archive)
    elif in_place:
        _check_files_present(folder, manifest)
    if handler_file(archive.handler).endswith(".py"):
        inside(folder, handler_file(archive.handler), "handler")
    return archive


def inside(folder: str, relative: str, key: str) -> str:
    """``folder/relative`` if it exists and stays inside ``folder`` (manifests are not trusted)."""
    path = os.path.realpath(os.path.join(folder, relative))
    if os.path.isabs(relative) or os.path.commonpath([path, os.path.realpath(folder)]) != os.path.realpath(folder):
        raise ArchiveError(f"manifest {key} = {relative!r} points outside the archive", key=key)
    if not os.path.exists(path):
        raise ArchiveError(f"manifest {key} = {relative!r}: the archive has no such file", key=key)
    return path


def archive_root(folder: str) -> str:
    """The folder holding the manifest; torch-model-archiver's tgz wraps it in ``<name>/``."""
    if any(os.path.isfile(os.path.join(folder, m)) for m in (MANIFEST_NAME, TORCHSERVE_MANIFEST)):
        return folder
    children = [c for c in os.listdir(folder) if not c.startswith(".")]
    if len(children) == 1 and os.path.isdir(os.path.join(folder, children[0])):
        return os.path.join(folder, children[0])
    return folder


def _check_files_present(folder: str, manifest: dict) -> None:
    """A folder used in place is not re-hashed (it may hold gigabytes); sizes catch most damage."""
    for name, info in (manifest.get("files") or {}).items():
        path = os.path.join(folder, name)
        try:
            size = os.path.getsize(path)
        except OSError:
            raise ArchiveError(f"{folder}: {name} listed in {MANIFEST_NAME} is missing") from None
        if isinstance(info, dict) and info.get("size") not in (None, size):
            raise ArchiveError(f"{folder}: {name} has {size} bytes, the manifest says {info['size']}")


# ---- unpacking ------------------------------------------------------------------------------------
def unpack(path: str, unpack_root: str, limits: UnpackLimits = UnpackLimits()) -> str:
    """The folder ``path`` unpacks to, unpacking it first unless an identical copy is there."""
    st = os.stat(path)
    identity = f"{os.path.realpath(path)}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    stem = re.sub(r"(\.tar\.gz|\.tgz|\.tar|\.zip|\.mar)$", "", os.path.basename(path))
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:60] or "archive"
    final = os.path.join(unpack_root, f"{stem}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}")
    if os.path.isdir(final):
        return final  # only complete folders are ever renamed into place
    os.makedirs(unpack_root, mode=0o700, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpacking-", dir=unpack_root)
    try:
        hashes = _extract(path, tmp, _Budget(path, unpack_root, limits))
        _verify(path, tmp, hashes)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):  # not a concurrent unpack of the same archive
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _extract(path: str, dest: str, budget: _Budget) -> dict[str, str]:
    with open(path, "rb") as f:
        magic = f.read(4)
    try:
        if magic.startswith(b"PK"):
            return _extract_zip(path, dest, budget)
        if tarfile.is_tarfile(path):
            return _extract_tar(path, dest, budget)
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise ArchiveError(f"{path} is damaged: {type(exc).__name__}: {exc}") from None
    raise ArchiveError(f"{path} is neither a tar.gz/tgz nor a zip/.mar archive")


def _member_path(dest: str, name: str) -> str:
    """Where a member may be written, or an error: absolute, ``..``, and odd names are refused."""
    clean = name.replace("\\", "/")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean) or ".." in parts or "\0" in clean or not parts:
        raise ArchiveError(f"unsafe member name {name!r} in archive (absolute path or '..')")
    target = os.path.join(dest, *parts)
    parent = os.path.realpath(os.path.dirname(target))
    if os.path.commonpath([parent, os.path.realpath(dest)]) != os.path.realpath(dest):
        raise ArchiveError(f"member {name!r} would be written outside the archive folder (through a link)")
    return target


def _extract_zip(path: str, dest: str, budget: _Budget) -> dict[str, str]:
    hashes = {}
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        budget.declared(len(members), sum(info.file_size for info in members))
        for info in members:
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"member {info.filename!r} of {path} is a link; links are not allowed in zip archives")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: zips often keep permissions only
                raise ArchiveError(f"member {info.filename!r} of {path} is a device, pipe or socket; "
                                   "only files and folders are allowed")
            target = _member_path(dest, info.filename)
            budget.member(f"member {info.filename!r}")
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(info) as src, _create(target, info.filename) as dst:
                hashes[_relative(dest, target)] = copy_hashing(src, dst, budget)[0]
    return hashes


def _create(target: str, name: str):
    try:
        return open(target, "xb")
    except FileExistsError:
        raise ArchiveError(f"member {name!r} appears twice in the archive") from None


def _extract_tar(path: str, dest: str, budget: _Budget) -> dict[str, str]:
    hashes = {}
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            try:
                member = tarfile.data_filter(member, dest)  # refuses absolute, '..', links out, devices
            except tarfile.FilterError as exc:
                raise ArchiveError(f"unsafe member in {path}: {exc}") from None
            target = _member_path(dest, member.name)
            budget.member(f"member {member.name!r}", member.size if member.isreg() else 0)
            if member.isreg():
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with archive.extractfile(member) as src, _create(target, member.name) as dst:
                    hashes[_relative(dest, target)] = copy_hashing(src, dst, budget)[0]
                os.chmod(target, member.mode & 0o755 | 0o600)
            else:
                archive.extract(member, dest, filter="data")
    return hashes


def _relative(dest: str, target: str) -> str:
    return os.path.relpath(target, dest).replace(os.sep, "/")


def _verify(path: str, dest: str, hashes: dict[str, str]) -> None:
    """Compare what was unpacked with the lmjupyter manifest's sha256 sums (TorchServe's has none)."""
    root = archive_root(dest)
    kind, manifest = read_manifest(root)
    if kind != "lmjupyter":
        return
    prefix = _relative(dest, root) + "/" if root != dest else ""
    for name, info in (manifest.get("files") or {}).items():
        expected = info.get("sha256") if isinstance(info, dict) else None
        actual = hashes.get(prefix + name)
        if actual is None:
            raise ArchiveError(f"{path} is damaged: {name} is listed in its manifest but missing")
        if expected and actual != expected:
            raise ArchiveError(f"{path} is damaged: {name} has sha256 {actual[:12]}..., "
                               f"the manifest says {expected[:12]}...")
