"""Start torchrun so that it dies with the server, even after ``kill -9`` of the server.

The server runs ``python -m lmjupyter.worker.launch <torchrun args...>``; we ask
Linux to send SIGTERM when our parent (the server) dies, then exec torchrun in
this same process (the death signal survives exec). torchrun's own SIGTERM
handler then stops the ranks, and the ranks watch their own parent the same way.
Standard library only, so that it starts in milliseconds.
"""
import os
import signal
import sys

from lmjupyter.worker.deathsig import die_with_parent


def main() -> None:
    die_with_parent(signal.SIGTERM)
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", *sys.argv[1:]])


if __name__ == "__main__":
    main()
