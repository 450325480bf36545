"""TorchServe's ``ts`` package as lmjupyter provides it to handlers (lmjupyter.compat.torchserve).

Put on ``sys.path`` in the ranks by the handler loader; never installed.
"""
from lmjupyter.compat.torchserve import TORCHSERVE_VERSION as __version__
