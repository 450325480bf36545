"""docs/openapi.yaml documents every route the servers mount, and nothing they don't (``lmjupyter serve``'s
routes are a superset of the extension's: it also answers OpenAI's /v1 at its root)."""
import os
import re

import yaml

from lmjupyter.server.api import STANDALONE_ROUTES

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "openapi.yaml")


def _as_openapi(pattern: str) -> str:
    names = iter(["name", "version", "v"])
    return "/" + re.sub(r"\(\[\^/\]\+\)", lambda _m: "{" + next(names) + "}", pattern)


def test_openapi_lists_exactly_the_mounted_routes():
    with open(SPEC) as f:
        spec = yaml.safe_load(f)
    documented = {re.sub(r"\{[^}]+\}", "{}", p) for p in spec["paths"]}
    mounted = {re.sub(r"\{[^}]+\}", "{}", _as_openapi(pattern)) for pattern, _ in STANDALONE_ROUTES}
    assert documented == mounted
    assert spec["openapi"].startswith("3.")
