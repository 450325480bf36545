"""A torchrun agent inside a process forked from the fork server (``lmjupyter.worker.forkserver``).

``run_agent(argv)`` takes exactly the arguments ``python -m torch.distributed.run`` would
(``--standalone`` or ``--nnodes/--rdzv-*``, ``--nproc-per-node``, ``--monitor-interval``...,
then ``-m lmjupyter.worker.main SPEC``) and runs torchrun's own ``run()`` on them: the same
rendezvous, the same environment for every rank, the same monitoring, restarts and exit.
One thing differs: where torchrun would exec a new interpreter per rank, it starts the
rank's ``main`` as a function with torchrun's ``fork`` start method (unless
``--start-method`` was given), so ranks begin with torch already imported.
"""
from __future__ import annotations

import os
import signal
import sys

RANK_MODULE = "lmjupyter.worker.main"


def run_agent(argv: list[str]) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(argv)
    if not (args.module and args.training_script == RANK_MODULE):
        raise ValueError(f"the fork server runs {RANK_MODULE} ranks only, not {args.training_script!r}")
    if not _given(argv, "start-method") and "PET_START_METHOD" not in os.environ:
        args.start_method = "fork"
    script_args = list(args.training_script_args)
    config_from_args = torchrun.config_from_args

    def rank_as_function(parsed):
        config, _command, _command_args = config_from_args(parsed)  # torchrun's config, unchanged
        return config, forked_rank, script_args

    torchrun.config_from_args = rank_as_function  # read by torchrun.run() below, in this process only
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        print(exc.format_msg(), file=sys.stderr, flush=True)
        return 1
    return 0


def forked_rank(*script_args: str) -> None:
    """A rank, forked from the agent: what ``python -m lmjupyter.worker.main SPEC`` would do."""
    # The agent's handlers (torchrun turns SIGTERM into an exception) are not the rank's.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = [RANK_MODULE, *script_args]
    from lmjupyter.worker.main import main

    code = main(list(script_args))
    if code:
        raise SystemExit(code)


def _given(argv: list[str], option: str) -> bool:
    names = {f"--{option}", f"--{option.replace('-', '_')}"}
    return any(arg in names or arg.split("=", 1)[0] in names for arg in argv)
