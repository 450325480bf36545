"""What the HTTP layer passes on with a request to a TorchServe-style handler: its id and headers.

Only models whose ranks said they serve a TorchServe-style handler (and every call
on TorchServe's own routes) pay for this; lmjupyter's own handlers get none.
"""
from __future__ import annotations

import uuid

# Never handed to handlers: the server's secret and the browser's session.
PRIVATE_HEADERS = frozenset({"authorization", "cookie", "x-xsrftoken"})


def request_meta(request, extra: tuple = (), request_id: str | None = None) -> dict:
    """``{"id": ..., "headers": [(name, value), ...]}`` of a Tornado request (``extra`` headers last)."""
    headers = [(name, value) for name, value in request.headers.get_all() if name.lower() not in PRIVATE_HEADERS]
    return {"id": request_id or str(uuid.uuid4()), "headers": headers + list(extra)}
