"""The ``lmjupyter`` command: ``serve`` (the standalone server) and tools around it."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys

from lmjupyter import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmjupyter", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the standalone REST server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--token", default=None, help="API token (default: $LMJUPYTER_TOKEN, else generated)")
    serve.add_argument("--model-store", default=None, help="folder of archives and the registry snapshot")
    serve.add_argument("--gpus", default=None,
                       help="comma-separated GPU ids the server may use (default: $LMJUPYTER_GPUS, else nvidia-smi)")
    serve.add_argument("--allow-root", action="append", default=[], metavar="DIR",
                       help="another folder handlers and models may be read from (repeatable)")
    serve.add_argument("--install-requirements", action="store_true",
                       help="pip-install archives' requirements files, per model (never into this environment)")
    serve.add_argument("--warm-spares", type=int, default=0, metavar="N",
                       help="keep N torchrun groups started, torch imported, for the next worker starts of the "
                            "same shape (nproc, devices, environment): those skip torchrun's start and torch's "
                            "import, most of a cold start; each spare rank holds ~250 MB of RAM (default 0: off)")
    serve.add_argument("--archive-max-size", default="64G", metavar="SIZE",
                       help="most bytes one archive may unpack to (default 64G)")
    serve.add_argument("--archive-max-files", type=int, default=100_000, metavar="N",
                       help="most members one archive may have (default 100000)")
    serve.add_argument("--max-body-size", default="64M", metavar="SIZE",
                       help="largest request body (bytes, or 64M, 1G); larger ones get 413 without being read (default 64M)")
    serve.add_argument("--client-timeout", type=float, default=60.0, metavar="S",
                       help="a client whose request headers or body take longer, or that stops reading a stream "
                            "for this long, is disconnected (default 60)")
    serve.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                       help="event loop: auto (the default) takes uvloop when it is installed "
                            "(pip install 'lmjupyter[fast]'; about 10-20%% less server CPU per request), else asyncio's")

    from lmjupyter.archive import pack

    archive = commands.add_parser("archive", help="package a handler, its config and files into a model archive",
                                  description=pack.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pack.add_arguments(archive)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "archive":
        from lmjupyter.archive import pack

        return pack.main(args)
    return 2


def _serve(args) -> int:
    import logging

    from lmjupyter.archive.unpack import UnpackLimits
    from lmjupyter.engine.engine import EngineSettings
    from lmjupyter.gpus import discover_gpus
    from lmjupyter.server.limits import parse_size
    from lmjupyter.server.standalone import ServeError, serve

    try:
        gpus = discover_gpus(args.gpus)
    except ValueError as exc:
        print(f"lmjupyter serve: --gpus: {exc}", file=sys.stderr)
        return 2
    try:
        max_body_size = parse_size(args.max_body_size)
    except ValueError as exc:
        print(f"lmjupyter serve: --max-body-size: {exc}", file=sys.stderr)
        return 2
    try:
        archive_limits = UnpackLimits(max_bytes=parse_size(args.archive_max_size),
                                      max_members=max(1, args.archive_max_files))
    except ValueError as exc:
        print(f"lmjupyter serve: --archive-max-size: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:  # the socket layer would silently take the port modulo 65536
        print(f"lmjupyter serve: --port {args.port}: expected 0-65535 (0 picks a free port)", file=sys.stderr)
        return 2
    if not args.client_timeout > 0:
        print("lmjupyter serve: --client-timeout: expected a number of seconds > 0", file=sys.stderr)
        return 2
    model_store = os.path.abspath(args.model_store) if args.model_store else None
    if model_store:
        os.makedirs(model_store, exist_ok=True)
    settings = EngineSettings(root_dir=os.getcwd(), model_store=model_store, gpus=gpus,
                              allowed_roots=[os.path.abspath(p) for p in args.allow_root],
                              install_requirements=args.install_requirements,
                              warm_spares=max(0, args.warm_spares), archive_limits=archive_limits)
    run = _event_loop(args.loop)
    if run is None:
        print("lmjupyter serve: --loop uvloop: uvloop is not installed (pip install 'lmjupyter[fast]')",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s %(name)s] %(message)s")
    try:
        run(serve(args.host, args.port, args.token, settings, max_body_size=max_body_size,
                  client_timeout=args.client_timeout))
    except ServeError as exc:
        print(f"lmjupyter serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _event_loop(choice: str):
    """uvloop's runner when asked for or (auto) installed, else asyncio.run; None: uvloop is missing."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                return None
        else:
            return uvloop.run
    return asyncio.run


if __name__ == "__main__":
    sys.exit(main())
