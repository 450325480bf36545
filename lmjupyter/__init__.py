"""lmjupyter: serve PyTorch models too large for one GPU from inside Jupyter."""
from lmjupyter._version import __version__

__all__ = ["__version__"]
