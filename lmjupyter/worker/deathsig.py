"""Linux parent-death signals: no worker outlives the process that started it."""
import ctypes
import os
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int) -> None:
    """Ask the kernel to send ``signum`` when our parent exits; exit now if it already has."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent or parent == 1:
        os._exit(1)
