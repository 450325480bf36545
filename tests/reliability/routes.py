"""The routes a Tornado application really mounts, as concrete requests a test can send.

Read from the application object itself, so routes that later work adds to the route table
(OpenAI ``/v1/...``, TorchServe's ``/ping``, ``/predictions``) are covered without editing a list."""
from __future__ import annotations

import re

import tornado.web

VERBS = ("get", "post", "put", "delete", "patch", "head", "options")


def mounted(app: tornado.web.Application, base: type = tornado.web.RequestHandler) -> list[tuple[str, str, type]]:
    """(METHOD, path with every group filled, handler class) for each verb each mounted handler
    (a subclass of ``base``) implements."""
    out = []
    for rule in _rules(app.default_router):  # add_handlers() rules, then the wildcard router's
        target = rule.target
        if not (isinstance(target, type) and issubclass(target, base)) or not hasattr(rule.matcher, "regex"):
            continue
        pattern = rule.matcher.regex.pattern
        path = concrete(pattern)
        assert rule.matcher.regex.match(path), f"routes.concrete cannot fill {pattern!r}; teach it"
        for verb in VERBS:
            if getattr(target, verb) is not getattr(tornado.web.RequestHandler, verb):
                out.append((verb.upper(), path, target))
    return out


def concrete(pattern: str) -> str:
    """``/a/([^/]+)/b(?:/([^/]+))?$`` -> ``/a/x/b``: capture groups become ``x``, optional parts go."""
    path = pattern.rstrip("$").lstrip("^")
    path = re.sub(r"\(\?:[^()]*(?:\([^()]*\)[^()]*)*\)\?", "", path)  # optional (?:...)? parts
    path = re.sub(r"\((?:\?P<\w+>)?[^()]*\)", "x", path)               # capture groups
    return path.replace("\\", "")


def _rules(router):
    """Every rule of a rule table, nested tables included; a router without a table (the fast
    predict path) mounts no routes of its own: its requests fall through to the table."""
    for rule in getattr(router, "rules", ()):
        if isinstance(rule.target, tornado.routing.Router):
            yield from _rules(rule.target)
        else:
            yield rule
