"""``lmjupyter archive``: torch-model-archiver's options, streamed so that big checkpoints fit.

    lmjupyter archive --model-name llama --version 2 --handler handler.py \\
        --extra-files weights/,tokenizer.json --config-file model-config.yaml \\
        -r requirements.txt --archive-format tgz --export-path model_store

Options mean what they mean to torch-model-archiver: the handler, config,
requirements and each extra file land at the archive root under their own
names, and an extra *folder* contributes its contents (not the folder itself).
``--archive-format no-archive`` writes a folder instead of a file. Files are
read once, in chunks: each is hashed (sha256) while it is written, and the
manifest, written last, records the hashes.
"""
from __future__ import annotations

import glob
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass

import lmjupyter
from lmjupyter.archive.manifest import (FORMAT, FORMAT_VERSION, MANIFEST_NAME, ArchiveError, Progress,
                                        check_version, copy_hashing)

FORMATS = {"tgz": ".tar.gz", "zip": ".zip", "no-archive": ""}
SKIPPED_DIRS = {"__pycache__", ".ipynb_checkpoints"}


@dataclass
class _Entry:
    arcname: str
    path: str
    size: int
    mode: int


def add_arguments(parser) -> None:
    """The options of ``lmjupyter archive`` (named as torch-model-archiver names them)."""
    parser.add_argument("--model-name", required=True, help="model name; the archive is <export-path>/<name>.<ext>")
    parser.add_argument("--version", default="1", help="model version recorded in the manifest (default 1)")
    parser.add_argument("--handler", required=True,
                        help="handler .py file (optionally file.py:Class) or an importable module:Class")
    parser.add_argument("--serialized-file", default=None, help="checkpoint file, recorded as serializedFile")
    parser.add_argument("--extra-files", default=None,
                        help="comma-separated files and folders (a folder adds its contents at the archive root)")
    parser.add_argument("-r", "--requirements-file", default=None,
                        help="pip requirements, installed per model when the server is asked to")
    parser.add_argument("--config-file", default=None, help="model-config.yaml (validated now)")
    parser.add_argument("--archive-format", choices=sorted(FORMATS), default="tgz",
                        help="tgz (.tar.gz, default), zip, or no-archive (a folder; deploys without copying)")
    parser.add_argument("--export-path", default=".", help="folder to write the archive to (default: current)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing archive")


def main(args) -> int:
    try:
        path = create_archive(model_name=args.model_name, version=args.version, handler=args.handler,
                              serialized_file=args.serialized_file, extra_files=args.extra_files,
                              requirements_file=args.requirements_file, config_file=args.config_file,
                              archive_format=args.archive_format, export_path=args.export_path, force=args.force)
    except ArchiveError as exc:
        print(f"lmjupyter archive: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def create_archive(*, model_name: str, handler: str, version: str = "1", serialized_file: str | None = None,
                   extra_files: str | list[str] | None = None, requirements_file: str | None = None,
                   config_file: str | None = None, archive_format: str = "tgz", export_path: str = ".",
                   force: bool = False, progress_stream=None) -> str:
    """Write the archive and return its path (a folder for ``no-archive``)."""
    from lmjupyter.engine.engine import NAME_PATTERN  # lazy: the engine imports this package

    if not NAME_PATTERN.match(model_name or ""):
        raise ArchiveError(f"--model-name {model_name!r}: expected 1-64 letters, digits, '.', '_' or '-'",
                           key="model-name")
    version = check_version(version, "version")
    if archive_format not in FORMATS:
        raise ArchiveError(f"--archive-format {archive_format!r}: expected one of {sorted(FORMATS)}",
                           key="archive-format")
    out = os.path.join(os.path.abspath(export_path), model_name + FORMATS[archive_format])
    entries: dict[str, _Entry] = {}
    model: dict = {"modelName": model_name, "modelVersion": version}
    model["handler"] = _add_handler(entries, handler)
    for key, option, path in (("serializedFile", "serialized-file", serialized_file),
                              ("configFile", "config-file", config_file),
                              ("requirementsFile", "requirements-file", requirements_file)):
        if path is not None:
            model[key] = _add_file(entries, _existing(path, option), option)
    config = _validated_config(entries[model["configFile"]].path) if "configFile" in model else {}
    for item in _split_list(extra_files):
        _add_extra(entries, item, out)
    _check_destination(out, entries, force)
    os.makedirs(os.path.dirname(out), exist_ok=True)

    manifest = {"format": FORMAT, "formatVersion": FORMAT_VERSION, "lmjupyterVersion": lmjupyter.__version__,
                "createdOn": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runtime": "python",
                "model": model, "config": config, "files": {}}
    ordered = sorted(entries.values(), key=lambda e: e.arcname)
    progress = Progress(f"packaging {os.path.basename(out)}", sum(e.size for e in ordered), stream=progress_stream)
    writer = {"tgz": _write_tgz, "zip": _write_zip, "no-archive": _write_folder}[archive_format]
    tmp = writer(out, ordered, manifest, progress)
    progress.finish()
    os.chmod(tmp, 0o755 if archive_format == "no-archive" else 0o644)
    if os.path.lexists(out):
        shutil.rmtree(out) if os.path.isdir(out) and not os.path.islink(out) else os.unlink(out)
    os.rename(tmp, out)
    return out


# ---- collecting files ---------------------------------------------------------------------------
def _split_list(value) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item and item.strip()]


def _existing(path: str, option: str) -> str:
    if "://" in path:
        raise ArchiveError(f"--{option} {path!r}: only local paths are accepted, not URLs", key=option)
    if not os.path.exists(path):
        raise ArchiveError(f"--{option} {path!r} does not exist", key=option)
    return os.path.abspath(path)


def _add_handler(entries: dict[str, _Entry], handler: str) -> str:
    """A handler file goes into the archive; ``module:Class`` is recorded as it is."""
    file_part, sep, cls = handler.rpartition(":")
    if not (sep and cls.isidentifier()):
        file_part, cls = handler, ""
    if file_part.endswith(".py") or os.sep in file_part or os.path.isfile(file_part):
        name = _add_file(entries, _existing(file_part, "handler"), "handler")
        return f"{name}:{cls}" if cls else name
    if not all(part.isidentifier() for part in file_part.split(".")):
        raise ArchiveError(f"--handler {handler!r}: expected a .py file or module:Class", key="handler")
    return handler


def _add_file(entries: dict[str, _Entry], path: str, option: str, arcname: str | None = None) -> str:
    if not os.path.isfile(path):
        raise ArchiveError(f"--{option} {path}: expected a file", key=option)
    arcname = arcname or os.path.basename(path)
    if arcname == MANIFEST_NAME:
        raise ArchiveError(f"--{option} {path}: {MANIFEST_NAME} is reserved for the archive's manifest", key=option)
    stat = os.stat(path)
    previous = entries.get(arcname)
    if previous is not None and os.path.realpath(previous.path) != os.path.realpath(path):
        raise ArchiveError(f"--{option} {path}: another file, {previous.path}, would also be stored "
                           f"as {arcname!r}", key=option)
    entries[arcname] = _Entry(arcname, path, stat.st_size, 0o755 if stat.st_mode & 0o111 else 0o644)
    return arcname


def _add_extra(entries: dict[str, _Entry], item: str, out: str) -> None:
    matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
    if not matches or not all(os.path.exists(m) for m in matches):
        raise ArchiveError(f"--extra-files {item!r} does not exist", key="extra-files")
    for match in matches:
        path = _existing(match, "extra-files")
        if os.path.isfile(path):
            _add_file(entries, path, "extra-files")
            continue
        seen = set()
        for root, dirs, files in os.walk(path, followlinks=True):
            real = os.path.realpath(root)
            if real in seen or os.path.realpath(out) == real:  # a link loop, or our own output folder
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            for name in sorted(files):
                file_path = os.path.join(root, name)
                if name.endswith(".pyc") or os.path.realpath(file_path) == os.path.realpath(out):
                    continue
                _add_file(entries, file_path, "extra-files", os.path.relpath(file_path, path).replace(os.sep, "/"))


def _validated_config(path: str) -> dict:
    """Refuse a broken model-config.yaml now rather than at deploy; warn about unknown keys."""
    import yaml

    from lmjupyter.config import ConfigError, load_config

    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        _, warnings = load_config(text, filename=os.path.basename(path))
    except ConfigError as exc:
        raise ArchiveError(f"--config-file {exc}", key="config-file") from None
    for warning in warnings:
        print(f"lmjupyter archive: warning: {warning}", file=sys.stderr)
    return yaml.safe_load(text) or {}


def _check_destination(out: str, entries: dict[str, _Entry], force: bool) -> None:
    if os.path.lexists(out) and not force:
        raise ArchiveError(f"{out} already exists; pass --force to overwrite it", key="force")
    real_out = os.path.realpath(out)
    for entry in entries.values():
        if os.path.commonpath([os.path.realpath(entry.path), real_out]) == real_out:
            raise ArchiveError(f"{entry.path} is inside the output {out}; choose another --export-path",
                               key="export-path")


# ---- writing ------------------------------------------------------------------------------------
class _HashingReader:
    """A file object that hashes what tarfile reads through it."""

    def __init__(self, f, progress: Progress):
        import hashlib

        self._f, self._progress, self.digest, self.size = f, progress, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        chunk = self._f.read(n)
        self.digest.update(chunk)
        self.size += len(chunk)
        self._progress.add(len(chunk))
        return chunk


def _record(manifest: dict, entry: _Entry, sha256: str, size: int) -> None:
    if size != entry.size:
        raise ArchiveError(f"{entry.path} changed size while it was packed ({entry.size} -> {size} bytes)")
    manifest["files"][entry.arcname] = {"size": size, "sha256": sha256}


def _manifest_bytes(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=False).encode() + b"\n"


def _write_tgz(out: str, entries: list[_Entry], manifest: dict, progress: Progress) -> str:
    fd, tmp = tempfile.mkstemp(prefix=".packing-", suffix=".tar.gz", dir=os.path.dirname(out))
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6,
                                                      format=tarfile.PAX_FORMAT) as tar:
            for entry in entries:
                with open(entry.path, "rb") as f:
                    reader = _HashingReader(f, progress)
                    tar.addfile(_tarinfo(entry.arcname, entry.size, entry.mode), reader)
                _record(manifest, entry, reader.digest.hexdigest(), reader.size)
            data = _manifest_bytes(manifest)
            tar.addfile(_tarinfo(MANIFEST_NAME, len(data), 0o644), io.BytesIO(data))
        return tmp
    except BaseException:
        os.unlink(tmp)
        raise


def _tarinfo(name: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, int(time.time())
    return info


def _write_zip(out: str, entries: list[_Entry], manifest: dict, progress: Progress) -> str:
    fd, tmp = tempfile.mkstemp(prefix=".packing-", suffix=".zip", dir=os.path.dirname(out))
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED, allowZip64=True,
                                                         compresslevel=6) as archive:
            for entry in entries:
                info = zipfile.ZipInfo.from_file(entry.path, entry.arcname)
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(entry.path, "rb") as src, archive.open(info, "w") as dst:
                    _record(manifest, entry, *copy_hashing(src, dst, progress))
            archive.writestr(MANIFEST_NAME, _manifest_bytes(manifest))
        return tmp
    except BaseException:
        os.unlink(tmp)
        raise


def _write_folder(out: str, entries: list[_Entry], manifest: dict, progress: Progress) -> str:
    tmp = tempfile.mkdtemp(prefix=".packing-", dir=os.path.dirname(out))
    try:
        for entry in entries:
            target = os.path.join(tmp, *entry.arcname.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(entry.path, "rb") as src, open(target, "wb") as dst:
                _record(manifest, entry, *copy_hashing(src, dst, progress))
            os.chmod(target, entry.mode)
        with open(os.path.join(tmp, MANIFEST_NAME), "wb") as f:
            f.write(_manifest_bytes(manifest))
        return tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
