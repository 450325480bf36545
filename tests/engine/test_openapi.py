"""docs/openapi.yaml documents every route the servers mount, and nothing they don't (``lmjupyter serve``'s
routes are a superset of the extension's: it also answers OpenAI's /v1 at its root)."""
import os
import re

import yaml

from lmjupyter.server.api import all_routes

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "openapi.yaml")


def _as_openapi(pattern: str) -> str:
    names = iter(["name", "version", "v"])
    path = re.sub(r"\(\[\^/\]\+\)", lambda _m: "{" + next(names) + "}", pattern)
    return "/" + path.replace("(.+)", "{path}")


def test_openapi_lists_exactly_the_mounted_routes():
    with open(SPEC) as f:
        spec = yaml.safe_load(f)
    documented = {re.sub(r"\{[^}]+\}", "{}", p) for p in spec["paths"]}
    mounted = {re.sub(r"\{[^}]+\}", "{}", _as_openapi(pattern)) for pattern, _ in all_routes(openai_at_root=True)}  # TorchServe's and /v1 too
    assert documented == mounted
    assert spec["openapi"].startswith("3.")
