"""lmjupyter: serve PyTorch models too large for one GPU from inside Jupyter."""
from lmjupyter._version import __version__

__all__ = ["__version__", "Client", "LMServeError"]


def __getattr__(name):
    """Import the client lazily: ranks import this package and need no HTTP library."""
    if name in ("Client", "LMServeError"):
        from lmjupyter import client

        return getattr(client, name)
    raise AttributeError(name)
