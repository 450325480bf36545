from lmjupyter.compat.torchserve import TORCHSERVE_VERSION as __version__

__all__ = ["__version__"]
