"""Is a process still there? Shared by the engine (killing groups) and discovery (finding servers)."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie's parent is gone or about to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (not Linux): os.kill said it exists
