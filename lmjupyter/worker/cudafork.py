"""Whether a process may fork children that will still be able to use CUDA.

Once a process has initialised the CUDA driver (``cuInit``), a child forked from it
cannot use CUDA: torch marks such children and their first CUDA call fails with
"Cannot re-initialize CUDA in forked subprocess". ``torch.cuda.is_initialized()`` does
not tell: a bare ``torch.cuda.is_available()`` or ``device_count()`` reaches the driver
through ``cudaGetDeviceCount`` without initialising torch's CUDA state. The fork server
and every agent it forks ask ``forks_keep_cuda()`` instead, which forks once and asks the
child.

``keep_cuda_for_forks()`` sets torch's documented knob, ``PYTORCH_NVML_BASED_CUDA_CHECK=1``,
under which ``is_available()`` asks NVML and leaves the driver alone. torchrun's own
``LaunchConfig`` calls ``torch.cuda.is_available()`` in every agent (to choose NUMA
bindings), so the agent needs the knob too, not only the fork server (measured on an H200:
without it in the agent every forked GPU rank failed).
"""
from __future__ import annotations

import os

KNOB = "PYTORCH_NVML_BASED_CUDA_CHECK"


def keep_cuda_for_forks() -> None:
    os.environ[KNOB] = "1"


def forks_keep_cuda() -> bool:
    """True when a child forked now could initialise CUDA (always on a torch without CUDA)."""
    import torch

    if not torch.cuda._is_compiled():
        return True
    pid = os.fork()
    if pid == 0:
        os._exit(1 if torch.cuda._is_in_bad_fork() else 0)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
