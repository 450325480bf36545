"""TorchServe compatibility: its handlers, ``.mar`` archives and REST clients work unchanged.

Which handlers get TorchServe's contract (decided once per worker, after the import;
see :func:`~lmjupyter.compat.torchserve.adapter.is_torchserve_style`). A handler is
*TorchServe-style* when

1. its class subclasses TorchServe's ``BaseHandler``
   (``ts.torch_handler.base_handler.BaseHandler``, which is
   :class:`lmjupyter.compat.torchserve.base_handler.BaseHandler`), or
2. it is a module-level ``handle(data, context)`` function (TorchServe's other entry
   point; lmjupyter's own contract is a class), or
3. the module that defines it imports ``ts`` (``import ts...`` or ``from ts... import``), or
4. it comes in a TorchServe archive (a ``.mar``, or torch-model-archiver's tgz or
   folder: one with ``MAR-INF/MANIFEST.json``), whatever it imports.

Such a handler gets TorchServe's request rows (``{"body": ...}``, form fields and
multipart parts by name), TorchServe's ``context`` (request ids and headers,
``set_response_content_type``, ``set_response_status``, ``metrics``...) and its
answers are encoded as TorchServe encodes them. Every other handler is a native
lmjupyter handler and keeps lmjupyter's simple items (decoded JSON, str or bytes).

Where things are:

- ``shim/ts/``: the ``ts`` package handlers import; put on ``sys.path`` by the
  handler loader in every rank (never installed into an environment);
- rank side: :mod:`.adapter` (runs a TorchServe-style handler), :mod:`.context`,
  :mod:`.rows` (request rows in, answers out), :mod:`.base_handler`,
  :mod:`.metrics`, :mod:`.util`, :mod:`.distributed`;
- server side: :mod:`.rest` (``/ping``, ``/predictions``, ``/models``) over
  :mod:`.management`; :mod:`.archive` (what of a ``.mar`` carries over).

Nothing here imports torch at import time.
"""
from __future__ import annotations

import os
import sys

SHIM_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim")
# The TorchServe release whose handler API, REST paths and answers this layer follows.
TORCHSERVE_VERSION = "0.12.0"


def install_ts_shim() -> None:
    """Make ``import ts`` find the shim (first, so that a real TorchServe install cannot shadow it)."""
    if SHIM_PATH not in sys.path:
        sys.path.insert(0, SHIM_PATH)
