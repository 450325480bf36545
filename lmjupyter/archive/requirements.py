"""An archive's requirements, installed only when asked, into a folder of their own.

``pip install --target <folder> -r requirements.txt`` with the server's Python,
so compiled wheels match the ranks; the folder goes on the ranks' ``PYTHONPATH``
and the server's own environment is never changed. A folder whose requirements
file has not changed since it was installed is reused (restarts stay fast).
pip's own settings apply (``PIP_INDEX_URL``, ``PIP_NO_INDEX``, ``PIP_FIND_LINKS``...).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys

MARKER = ".lmjupyter-requirements.sha256"


class RequirementsError(RuntimeError):
    """pip failed; the message ends with the tail of its output."""


async def install_requirements(requirements: str, target: str, *, cwd: str, timeout: float = 1800) -> str:
    """Install into ``target`` (unless already done for the same file) and return it."""
    with open(requirements, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    marker = os.path.join(target, MARKER)
    if os.path.isfile(marker) and open(marker).read().strip() == digest:
        return target
    staging = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.installing-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_USER", "PYTHONPATH", "PIP_TARGET")}
    # Relative paths in a requirements file are read by pip from the working directory: the model's.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
        "--no-warn-script-location", "--target", staging, "-r", requirements,
        cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException as exc:  # a timeout, or the server stopping
        process.kill()
        await process.wait()
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, asyncio.TimeoutError):
            raise RequirementsError(f"pip install -r {os.path.basename(requirements)} did not finish "
                                    f"within {timeout:g}s") from None
        raise
    if process.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join(output.decode(errors="replace").strip().splitlines()[-15:])
        raise RequirementsError(f"pip install -r {os.path.basename(requirements)} failed "
                                f"(exit {process.returncode}):\n{tail}")
    with open(os.path.join(staging, MARKER), "w") as f:
        f.write(digest + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.rename(staging, target)
    return target
