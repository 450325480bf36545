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
                       help="keep N torchrun groups started, ranks waiting for a model, for the next worker "
                            "starts of the same shape (nproc, devices, environment): those skip torchrun's "
                            "rendezvous too; with the fork server a start is fast already (default 0: off)")
    serve.add_argument("--no-fork-server", dest="fork_server", action="store_false",
                       help="start every worker's torchrun in a new interpreter (cold: torch is imported per "
                            "process) instead of forking it from the fork server, which has torch imported")
    serve.add_argument("--preload", action="append", default=None, metavar="MODULE",
                       help="a module the fork server imports besides torch, so that handlers find it imported "
                            "(repeatable or comma-separated; imported one at a time between launches, after "
                            "torch); replaces the default, torch.distributed.pipelining and "
                            "lmjupyter.worker.preload_hf (what the built-in handler uses); --preload '' "
                            "imports torch only")
    serve.add_argument("--node-address", default=None, metavar="ADDR",
                       help="this host's address for `lmjupyter node` agents on other hosts: their ranks connect "
                            "to it and torchrun's rendezvous runs on it (default: --host)")
    serve.add_argument("--node-port", type=int, default=0, metavar="PORT",
                       help="TCP port on --node-address that ranks on other hosts connect to (default 0: a free one)")
    serve.add_argument("--node-timeout", type=float, default=10.0, metavar="S",
                       help="seconds without a heartbeat after which an agent counts as lost and its worker "
                            "groups restart (default 10)")
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

    commands.add_parser("lab", help="JupyterLab with the extension, on uvloop when installed (lmjupyter lab "
                                    "[--loop auto|uvloop|asyncio] [jupyter lab arguments])", add_help=False)

    from lmjupyter.nodes import agent

    node = commands.add_parser("node", help="run this host's share of worker groups for a server on another host",
                               description=agent.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    agent.add_arguments(node)

    from lmjupyter.archive import pack

    archive = commands.add_parser("archive", help="package a handler, its config and files into a model archive",
                                  description=pack.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pack.add_arguments(archive)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lab"]:  # every other argument is JupyterLab's, so argparse stays out of it
        from lmjupyter import lab

        return lab.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "node":
        from lmjupyter.nodes import agent

        return agent.main(args)
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
    try:
        node_address = _node_address(args.node_address, args.host)
    except ValueError as exc:
        print(f"lmjupyter serve: --node-address: {exc}", file=sys.stderr)
        return 2
    settings = EngineSettings(root_dir=os.getcwd(), model_store=model_store, gpus=gpus,
                              allowed_roots=[os.path.abspath(p) for p in args.allow_root],
                              install_requirements=args.install_requirements,
                              warm_spares=max(0, args.warm_spares), fork_server=args.fork_server,
                              preload=None if args.preload is None else
                              [m for value in args.preload for m in value.split(",") if m],
                              node_address=node_address, node_port=args.node_port,
                              node_timeout=max(1.0, args.node_timeout),
                              archive_limits=archive_limits)
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


def _node_address(given: str | None, host: str) -> str:
    """The address agents' ranks and torchrun's rendezvous use: --node-address, else --host (never a wildcard)."""
    import ipaddress
    import socket

    value = given or host
    if value in ("", "0.0.0.0", "::", "*"):
        if given:
            raise ValueError(f"{given!r} is not one address; name this host's address that other hosts reach")
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        try:
            return socket.gethostbyname(value)
        except OSError:
            raise ValueError(f"{value!r} is neither an IP address nor a host name that resolves") from None


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
