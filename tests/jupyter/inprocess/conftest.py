"""pytest-jupyter's fixtures (``jp_serverapp``, ``jp_fetch``, ...) for the in-process server tests.

pytest-jupyter has no entry point and ``pytest_plugins`` only works in the top-level
conftest, so its fixtures and hooks are imported here; they apply to this folder only
(its autouse fixtures close the event loop and clean the ServerApp after every test).
"""
from pytest_jupyter.jupyter_server import *  # noqa: F401,F403
