"""``lmjupyter lab``'s own arguments: --loop is taken out, everything else reaches JupyterLab;
a bad --loop is one line and exit status 2, before JupyterLab starts."""
import subprocess
import sys

import pytest

from lmjupyter.lab import split_loop_argument


def test_loop_is_taken_out_and_the_rest_is_jupyterlabs():
    assert split_loop_argument(["--ip", "127.0.0.1", "--loop", "asyncio", "nb.ipynb"]) == (
        "asyncio", ["--ip", "127.0.0.1", "nb.ipynb"])
    assert split_loop_argument(["--loop=uvloop", "--port", "0"]) == ("uvloop", ["--port", "0"])
    assert split_loop_argument([]) == ("auto", [])
    with pytest.raises(ValueError, match="--loop 'fast': expected one of auto, uvloop, asyncio"):
        split_loop_argument(["--loop", "fast"])


def test_a_bad_loop_is_one_line_and_exit_2():
    done = subprocess.run([sys.executable, "-m", "lmjupyter.cli", "lab", "--loop", "fast"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "lmjupyter lab: --loop 'fast': expected one of auto, uvloop, asyncio"]
