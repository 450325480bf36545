"""``%load_ext lmjupyter``: the ``%lmserve`` line magic and ``%%lmserve`` cell magic.

Thin clients of the REST API through :class:`lmjupyter.Client`; the server is
found by :mod:`lmjupyter.discovery`. ``%lmserve?`` documents every subcommand.
"""


def load_ipython_extension(ipython):
    from lmjupyter.magics.core import LMServeMagics

    ipython.register_magics(LMServeMagics)


def unload_ipython_extension(ipython):
    from lmjupyter.magics.core import LMServeMagics

    magics = ipython.magics_manager.registry.pop(LMServeMagics.__name__, None)
    if magics is not None:
        for kind in ("line", "cell"):
            ipython.magics_manager.magics[kind].pop("lmserve", None)
