"""A torchrun agent inside a process forked from the fork server (``lmjupyter.worker.forkserver``).

``run_agent(argv)`` takes exactly the arguments ``python -m torch.distributed.run`` would
(``--standalone`` or ``--nnodes/--rdzv-*``, ``--nproc-per-node``, ``--monitor-interval``...,
then ``-m lmjupyter.worker.main SPEC``) and runs torchrun's own ``run()`` on them: the same
rendezvous, the same environment for every rank, the same monitoring, restarts and exit.
One thing differs: where torchrun would exec a new interpreter per rank, it starts the
rank's ``main`` as a function with torchrun's ``fork`` start method (unless
``--start-method`` was given), so ranks begin with torch already imported; with
``spawn`` instead where a forked rank could not use CUDA (``worker/cudafork.py``).
"""
from __future__ import annotations

import os
import signal
import sys

from lmjupyter.worker.cudafork import forks_keep_cuda

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
        if config.start_method == "fork" and not forks_keep_cuda():
            print("lmjupyter: the CUDA driver is initialised in the torchrun agent, so forked ranks could "
                  "not use CUDA; its ranks start with the 'spawn' method instead (slower)", file=sys.stderr,
                  flush=True)
            config.start_method = "spawn"
        return config, forked_rank, script_args

    torchrun.config_from_args = rank_as_function  # read by torchrun.run() below, in this process only
    _cheap_method_names()
    if args.standalone or torchrun.parse_min_max_nnodes(args.nnodes)[1] == 1:
        _no_first_round_skew()
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


def _no_first_round_skew() -> None:
    """One node only: drop the random 0-0.3 s sleep before the first rendezvous round.

    torch's dynamic rendezvous sleeps ``random.uniform(0, 0.3)`` s before a node's first join
    "to skew the rendezvous attempts across the nodes" (``next_rendezvous`` in
    ``elastic/rendezvous/dynamic_rendezvous.py``); with one node there is nothing to skew, and
    the sleep was half of a forked 1-rank start (benchmarks/RESULTS.md). Fixed delays (the 1 s
    poll of a waiting node) are kept. Multi-node groups keep torchrun's behaviour unchanged.
    """
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous

    delay = dynamic_rendezvous._delay

    def delay_unless_skew(seconds):
        if not isinstance(seconds, tuple):
            delay(seconds)

    dynamic_rendezvous._delay = delay_unless_skew


def _cheap_method_names() -> None:
    """The same answer as torch's ``get_method_name``, without ``inspect.stack()``.

    The rendezvous names each event it records after the calling method, found with two
    ``inspect.stack()`` calls: every frame is mapped to its module by scanning all of
    ``sys.modules`` and its source lines are read, ~0.1-0.3 s per start in a process with
    torch imported (cProfile of a forked agent; the cost grows with the modules imported).
    """
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous

    def get_method_name(depth=2):
        try:
            return sys._getframe(depth).f_code.co_name  # frame 0 is this function, as stack()[0]
        except ValueError:
            return "no_method_name"

    dynamic_rendezvous.get_method_name = get_method_name


def _given(argv: list[str], option: str) -> bool:
    names = {f"--{option}", f"--{option.replace('-', '_')}"}
    return any(arg in names or arg.split("=", 1)[0] in names for arg in argv)
