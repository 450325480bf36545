"""The manifest inside an lmjupyter archive, and what packing and unpacking share.

``lmjupyter-manifest.json`` sits at the root of every archive ``lmjupyter
archive`` makes. Its ``model`` section uses TorchServe's MANIFEST.json keys so
that a handler reading ``ctx.manifest["model"]["serializedFile"]`` carries over::

    {"format": "lmjupyter-archive", "formatVersion": 1, "lmjupyterVersion": "0.1.0",
     "createdOn": "2026-11-25T10:00:00Z",
     "model": {"modelName": "echo", "modelVersion": "1", "handler": "echo.py",
               "configFile": "model-config.yaml", "requirementsFile": "requirements.txt"},
     "config": {...model-config.yaml as parsed...},
     "files": {"echo.py": {"size": 311, "sha256": "..."}, ...}}
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time

MANIFEST_NAME = "lmjupyter-manifest.json"
TORCHSERVE_MANIFEST = "MAR-INF/MANIFEST.json"
FORMAT = "lmjupyter-archive"
FORMAT_VERSION = 1
CHUNK = 1 << 20
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


class ArchiveError(ValueError):
    """An archive that cannot be made or used; ``key`` names the option or manifest key at fault."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def read_manifest(folder: str) -> tuple[str, dict]:
    """``("lmjupyter", manifest)`` or ``("torchserve", manifest)`` for an unpacked archive folder."""
    for kind, name in (("lmjupyter", MANIFEST_NAME), ("torchserve", TORCHSERVE_MANIFEST)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    manifest = json.load(f)
            except (OSError, ValueError) as exc:
                raise ArchiveError(f"{name} in {folder} cannot be read: {exc}") from None
            if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
                raise ArchiveError(f"{name} in {folder}: expected a JSON object with a 'model' section")
            return kind, manifest
    raise ArchiveError(f"{folder} is not a model archive: it has neither {MANIFEST_NAME} "
                       f"(lmjupyter archive) nor {TORCHSERVE_MANIFEST} (TorchServe)")


def handler_file(handler: str | None) -> str:
    """The file part of ``file.py:Class`` (or ``module:Class``)."""
    head, sep, tail = (handler or "").rpartition(":")
    return head if sep and tail.isidentifier() else handler or ""


def check_version(version: str, key: str = "version") -> str:
    version = str(version)
    if not VERSION_PATTERN.match(version):
        raise ArchiveError(f"{key} = {version!r}: expected 1-64 letters, digits, '.', '_', '+' or '-'", key=key)
    return version


class Progress:
    """Bytes done of a total on stderr: live on a terminal, every 10% for big jobs in a log."""

    def __init__(self, label: str, total: int, *, stream=None, min_bytes: int = 64 << 20):
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.live = tty and total > 0
        self.enabled = self.live or total >= min_bytes
        self._last_time, self._last_tenth = 0.0, -1

    def add(self, count: int) -> None:
        self.done += count
        if not self.enabled:
            return
        if self.live:
            now = time.monotonic()
            if now - self._last_time >= 0.2 or self.done >= self.total:
                self._last_time = now
                self.stream.write(f"\r{self.label}: {self._text()}")
                self.stream.flush()
        else:
            tenth = self.done * 10 // max(self.total, 1)
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                self.stream.write(f"{self.label}: {self._text()}\n")
                self.stream.flush()

    def finish(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()

    def _text(self) -> str:
        percent = 100 * self.done // self.total if self.total else 100
        return f"{_size(self.done)} / {_size(self.total)} ({percent}%)"


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count} B"
        count /= 1024
    return f"{count:.1f} TB"


def copy_hashing(src, dst, progress: Progress | None = None) -> tuple[str, int]:
    """Copy one open file to another in chunks; return its sha256 and size."""
    digest, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        if dst is not None:
            dst.write(chunk)
        size += len(chunk)
        if progress is not None:
            progress.add(len(chunk))
    return digest.hexdigest(), size
