"""A shim of TorchServe's ``ts`` package for handlers imported from .mar archives.

Only on the PYTHONPATH of ranks that serve an imported TorchServe archive, never
installed. Handlers should import ``lmjupyter.handlers.BaseHandler`` instead.
"""
