"""Find and build the handler named by a deploy: ``path/to/file.py[:Class]`` or ``module:Class``.

A TorchServe-style module with a top-level ``handle(data, context)`` function
works too, and ``import ts...`` resolves for every handler (TorchServe's API, from
lmjupyter.compat.torchserve). The engine checks paths against its allowed roots
before a rank ever gets here; the rank only imports.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import types


class HandlerLoadError(ImportError):
    """The handler spec names nothing we can build; the message says what was looked for."""


def load_handler(spec: str, model_dir: str | None = None):
    """Return a handler instance (an object with ``initialize`` and ``handle``)."""
    from lmjupyter.compat.torchserve import install_ts_shim

    install_ts_shim()
    module_part, _, class_name = _split(spec)
    if module_part.endswith(".py") or os.sep in module_part:
        path = module_part
        if not os.path.isabs(path) and model_dir and os.path.exists(os.path.join(model_dir, path)):
            path = os.path.join(model_dir, path)
        module = _import_file(path)
    else:
        if model_dir and model_dir not in sys.path:
            sys.path.insert(0, model_dir)  # TorchServe puts the model dir on the path too
        module = importlib.import_module(module_part)
    return _instantiate(module, class_name, spec)


def _split(spec: str) -> tuple[str, str, str]:
    # "C:\\x.py" does not occur on Linux; a colon after ".py" or a dotted module names the class.
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isidentifier():
        return head, sep, tail
    return spec, "", ""


def _import_file(path: str) -> types.ModuleType:
    if not os.path.isfile(path):
        raise HandlerLoadError(f"handler file {path} does not exist")
    name = "lmjupyter_user_handler_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    handler_dir = os.path.dirname(os.path.abspath(path))
    if handler_dir not in sys.path:
        sys.path.insert(0, handler_dir)  # let a handler import its sibling files
    module_spec.loader.exec_module(module)
    return module


def _instantiate(module: types.ModuleType, class_name: str, spec: str):
    if class_name:
        cls = getattr(module, class_name, None)
        if cls is None:
            raise HandlerLoadError(f"handler {spec}: {module.__name__} has no attribute {class_name!r}")
        return cls() if inspect.isclass(cls) else _FunctionHandler(cls)
    classes = [obj for obj in vars(module).values()
               if inspect.isclass(obj) and obj.__module__ == module.__name__
               and callable(getattr(obj, "handle", None))]
    if len(classes) == 1:
        return classes[0]()
    if not classes and callable(getattr(module, "handle", None)):
        return _FunctionHandler(module.handle)
    if not classes:
        raise HandlerLoadError(f"handler {spec}: no class with a handle() method and no handle(data, context) function")
    names = ", ".join(c.__name__ for c in classes)
    raise HandlerLoadError(f"handler {spec}: several handler classes ({names}); name one as {spec}:ClassName")


class _FunctionHandler:
    """TorchServe's module-level ``handle(data, context)`` entry point."""

    def __init__(self, function):
        self.function = function

    def initialize(self, ctx) -> None:
        self.function(None, ctx)  # TorchServe's convention: the first call, with no data, loads

    def handle(self, requests, ctx):
        return self.function(requests, ctx)
