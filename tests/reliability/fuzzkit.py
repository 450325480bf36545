"""What the API fuzz tests share: the spec, the echo model they aim at, one fuzzed call."""
from __future__ import annotations

import os

import schemathesis
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "openapi.yaml")
ECHO = "echo"  # deployed on every fuzzed server: fuzzed calls on a real model, not only 404s
ECHO_HANDLER = "lmjupyter.handlers.base:BaseHandler"  # answers each request with itself
ECHO_CONFIG = {"deviceType": "cpu", "minWorkers": 1, "maxWorkers": 1, "responseTimeout": 30}


STANDALONE_ONLY = ("/v1/",)  # OpenAI at the root: lmjupyter serve only (Jupyter: <base_url>lmserve/v1/)
TORCHSERVE = ("/ping", "/predictions/", "/models")  # at the root standalone; Jupyter: <base_url>lmserve/...


def operations(server: str = "serve") -> list[str]:
    """Every route and method documented for ``server`` ("serve" or "jupyter"), as "METHOD /path"
    (the spec alone; no server needed)."""
    labels = [result.ok().label for result in schemathesis.openapi.from_path(SPEC).get_all_operations()]
    if server == "jupyter":
        labels = [label for label in labels if not label.split(" ", 1)[1].startswith(STANDALONE_ONLY)]
    return labels


def base_for(case, server_url: str, server: str) -> str:
    """Where a case's path is mounted: TorchServe's paths sit under ``lmserve/`` inside Jupyter."""
    if server == "jupyter" and case.path.startswith(TORCHSERVE):
        return server_url.rstrip("/") + "/lmserve"
    return server_url.rstrip("/")


def strategy(schema, label: str):
    """Valid and invalid cases (wrong types, missing fields, bodies that are not JSON) of one operation."""
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    from hypothesis import strategies as st

    return st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))


def load_schema(base_url: str, token: str, max_examples: int):
    """docs/openapi.yaml aimed at a running server: valid and invalid inputs (wrong types,
    missing fields, bodies that are not JSON), derandomized so a CI failure reproduces."""
    schema = schemathesis.openapi.from_path(SPEC)
    schema.config.update(base_url=base_url.rstrip("/"), headers={"Authorization": f"token {token}"},
                         request_timeout=60)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=max_examples, deterministic=True, database="none",
                                    # unknown query parameters are ignored, as Tornado and Jupyter do
                                    allow_extra_parameters=False)
    return schema


def excluded_checks(case) -> list:
    """Deploy, scale, logs, completions and node registration can be valid by the schema and still be
    refused with 400: the files a deploy names must exist, a worker count must lie in the model's
    minWorkers..maxWorkers, a rank below its nproc-per-node, a completion name a deployed causal LM.
    Those routes are not held to "schema-valid means accepted"; every other check applies to them."""
    from schemathesis.checks import positive_data_acceptance

    semantic = case.path.endswith("/logs") or case.method in ("POST", "PUT") and (
        case.path in ("/lmserve/api/models", "/models")  # the files a deploy names, the archive, must exist
        or case.path.endswith(("{name}", "{version}", "{model_name}", "{model_version}"))  # worker counts
        or case.path.endswith("completions")  # the model must be deployed, a causal LM, with a chat template
        or case.path == "/lmserve/api/nodes")  # the agent's address must be an IP address
    return [positive_data_acceptance] if semantic else []


def fuzz_call(case, calls: list, base_url: str) -> None:
    """Send the case as generated and, for a model route, once more aimed at the echo model.

    Deploys are made dry runs: a deploy that validates would otherwise start a torchrun group
    per example (real deploys are tested elsewhere); everything before the start is fuzzed.
    DELETE keeps its generated name, so the echo model stays deployed.
    """
    body = case.body
    if case.method == "POST" and case.path == "/lmserve/api/models" and isinstance(body, dict) \
            and isinstance(body.get("dry_run", False), bool):
        body["dry_run"] = True
    targets = [None]
    negative_path = case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH)
    if "name" in (case.path_parameters or {}) and case.method != "DELETE" and not negative_path:
        targets.append(ECHO)
    for name in targets:
        if name is not None:
            case.path_parameters["name"] = name
        response = case.call(base_url=base_url)
        calls.append((case.method, case.path, response.status_code))
        case.validate_response(response, excluded_checks=excluded_checks(case))
