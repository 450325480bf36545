"""lmjupyter: serve PyTorch models too large for one GPU from inside Jupyter."""
from lmjupyter._version import __version__

__all__ = ["__version__", "Client", "LMServeError"]


def __getattr__(name):
    """Import the client lazily: ranks import this package and need no HTTP library."""
    if name in ("Client", "LMServeError"):
        from lmjupyter import client

        return getattr(client, name)
    raise AttributeError(name)


def _jupyter_server_extension_points():
    """Jupyter Server finds the extension here (imported only by Jupyter, never by ranks)."""
    from lmjupyter.jupyter_server_ext import LMServe

    return [{"module": "lmjupyter.jupyter_server_ext", "app": LMServe}]


def load_ipython_extension(ipython):
    """``%load_ext lmjupyter``: the ``%lmserve`` / ``%%lmserve`` magics."""
    from lmjupyter.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):
    from lmjupyter.magics import unload_ipython_extension as unload

    unload(ipython)


def _jupyter_labextension_paths():
    """The prebuilt JupyterLab panel, for ``jupyter labextension develop``."""
    return [{"src": "labextension", "dest": "lmjupyter-labextension"}]
