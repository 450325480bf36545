"""The Jupyter Server extension: ``lmjupyter serve``'s REST routes inside Jupyter.

Enabled on ``pip install`` by ``jupyter-config/server-config/lmjupyter.json``
(or ``jupyter server extension enable lmjupyter``). Configure it in
``jupyter_server_config.py``::

    c.LMServe.model_store = "~/model-store"
    c.LMServe.gpus = [0, 1, 2, 3]
    c.LMServe.allow_roots = ["/data/models"]

The routes live under ``<base_url>lmserve/`` behind Jupyter's own auth; kernels
started by this server find it through ``LMJUPYTER_URL``/``LMJUPYTER_TOKEN``.
"""
from lmjupyter.jupyter_server_ext.app import LMServe

__all__ = ["LMServe"]


def _jupyter_server_extension_points():
    return [{"module": "lmjupyter.jupyter_server_ext", "app": LMServe}]
