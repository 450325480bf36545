"""What the cell magics write: ``./lmserve/NAME/handler.py`` and ``model-config.yaml``.

The folder is under the kernel's working directory (the notebook's folder), which
is inside the Jupyter server's root_dir, so the server may read it.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # the engine's rule for model names
CHECK_TIMEOUT = 120
_MARK = "LMJ-CHECK "

# Imports the handler as a rank would (lmjupyter.worker.loader) and reports what it found.
_CHECK_SCRIPT = r"""
import inspect, json, sys, traceback
path = sys.argv[1]
try:
    from lmjupyter.worker.loader import load_handler
    handler = load_handler(path)
    cls = type(handler)
    name = "handle() function" if cls.__name__ == "_FunctionHandler" else cls.__name__
    bases = [b.__name__ for b in cls.__mro__[1:-1]]
    streams = inspect.isgeneratorfunction(getattr(cls, "inference", None))
    print("%s" + json.dumps({"ok": True, "class": name, "bases": bases, "streams": streams}))
except BaseException as exc:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    where = "line %%d: %%s" %% (frames[-1].lineno, frames[-1].line) if frames else ""
    error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    print("%s" + json.dumps({"ok": False, "error": error, "where": where}))
""" % (_MARK, _MARK)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise ValueError(f"model name {name!r}: expected 1-64 letters, digits, '.', '_' or '-'")
    return name


def folder(name: str, create: bool = False) -> str:
    path = os.path.join(os.getcwd(), "lmserve", check_name(name))
    if create:
        os.makedirs(path, exist_ok=True)
    return path


def handler_file(name: str) -> str:
    return os.path.join(folder(name), "handler.py")


def config_file(name: str) -> str:
    return os.path.join(folder(name), "model-config.yaml")


def save(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    return path


def check_handler(path: str) -> dict:
    """Import the handler once in a fresh interpreter: syntax and import errors show now, not at deploy."""
    try:
        done = subprocess.run([sys.executable, "-c", _CHECK_SCRIPT, path], capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT, cwd=os.path.dirname(path), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"importing the handler took longer than {CHECK_TIMEOUT}s", "where": ""}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    return {"ok": False, "error": f"the import check exited with {done.returncode}: " + "\n".join(tail), "where": ""}


def relative(path: str) -> str:
    """./lmserve/x/handler.py rather than a long absolute path, when under the cwd."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else "./" + rel
