"""``lmjupyter lab``: JupyterLab (with the extension) on uvloop's event loop.

Jupyter Server creates its event loop in ``ServerApp.initialize`` before it imports any
server extension, so the extension cannot choose the loop; a launcher can. On the 2-core
machines uvloop takes 8-23 % less server CPU per predict call than asyncio's own loop
and brings the extension to ``lmjupyter serve``'s throughput (benchmarks/RESULTS.md,
"Jupyter extension beside lmjupyter serve"). Kernels, terminals and the Lab UI run on it
unchanged (their ZMQ sockets and websockets only need ``add_reader``, which uvloop has).

    lmjupyter lab [--loop auto|uvloop|asyncio] [any `jupyter lab` argument ...]
    python -m lmjupyter.lab ...                      # the same

``auto`` (the default) takes uvloop when it is installed (``pip install 'lmjupyter[fast]'``).
``GET <base_url>lmserve/api/health`` says which loop the server runs (``loop``).
"""
from __future__ import annotations

import asyncio
import sys

LOOPS = ("auto", "uvloop", "asyncio")


def split_loop_argument(argv: list[str]) -> tuple[str, list[str]]:
    """``--loop X`` / ``--loop=X`` out of the arguments; everything else is JupyterLab's."""
    choice, rest, args = "auto", [], iter(argv)
    for arg in args:
        if arg == "--loop":
            choice = next(args, "")
        elif arg.startswith("--loop="):
            choice = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if choice not in LOOPS:
        raise ValueError(f"--loop {choice!r}: expected one of {', '.join(LOOPS)}")
    return choice, rest


def use_loop(choice: str) -> str:
    """Set the event loop policy Jupyter's loop will come from; returns the loop's name."""
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("--loop uvloop: uvloop is not installed (pip install 'lmjupyter[fast]')") from None
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def main(argv: list[str] | None = None) -> int:
    try:
        choice, rest = split_loop_argument(sys.argv[1:] if argv is None else argv)
        use_loop(choice)
    except ValueError as exc:
        print(f"lmjupyter lab: {exc}", file=sys.stderr)
        return 2
    from jupyterlab.labapp import LabApp

    LabApp.launch_instance(argv=rest)
    return 0


def loop_name() -> str:
    """The running loop's kind, for the health route: ``uvloop`` or ``asyncio``."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


if __name__ == "__main__":
    sys.exit(main())
