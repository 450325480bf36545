"""How a kernel finds its server: extension variables, user variables, a private server.

(The Jupyter-runtime-file path needs a kernel whose parent is a Jupyter server: it is
tested in test_magics.py, inside such a kernel.)
"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from jupyterproc import alive, clean_env, wait_until
from lmjupyter import discovery

pytestmark = pytest.mark.timeout(120)


def test_the_extension_variables_come_first():
    env = {"LMJUPYTER_URL": "http://127.0.0.1:1/base", "LMJUPYTER_TOKEN": "t",
           "LMJUPYTER_SERVER_PID": str(os.getpid())}
    found = discovery.discover(environ=env, start_private=False)
    assert (found.source, found.url, found.token) == (discovery.EXTENSION, "http://127.0.0.1:1/base/", "t")
    assert "Jupyter server extension" in found.describe()


def test_variables_of_a_gone_server_are_skipped():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    env = {"LMJUPYTER_URL": "http://127.0.0.1:1/", "LMJUPYTER_SERVER_PID": str(gone.pid)}
    with pytest.raises(discovery.DiscoveryError, match="is gone"):
        discovery.discover(environ=env, start_private=False)


def test_variables_set_by_the_user():
    found = discovery.discover(environ={"LMJUPYTER_URL": "http://10.0.0.1:8765", "LMJUPYTER_TOKEN": "u"},
                               start_private=False)
    assert (found.source, found.url, found.token) == (discovery.ENVIRONMENT, "http://10.0.0.1:8765/", "u")




def _private_session(tmp_path, then: str) -> subprocess.Popen:
    """Terminal IPython (no Jupyter anywhere) that deploys a 1-rank model on its private server."""
    (tmp_path / "echo.py").write_text("from lmjupyter.handlers import BaseHandler\n\n\nclass Echo(BaseHandler):\n    pass\n")
    script = tmp_path / "session.ipy"
    script.write_text(textwrap.dedent(f"""\
        %load_ext lmjupyter
        %lmserve status
        %lmserve deploy echo --handler echo.py --nproc 1
        answer = %lmserve query echo "hi"
        import json
        from lmjupyter import discovery
        connection = discovery.current()
        pids = [r["pid"] for w in connection.client().describe("echo")["workers"] for r in w["ranks"]]
        print("PIDS", json.dumps({{"server": connection.process.pid, "ranks": pids, "answer": answer}}), flush=True)
        {then}
        """))
    return subprocess.Popen([sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=nocolor",
                             str(script)], cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _read_pids(proc) -> tuple[dict, str]:
    import json

    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("PIDS "):
            return json.loads(line[5:]), "".join(seen)
    raise AssertionError("the IPython session ended early:\n" + "".join(seen))


def test_plain_ipython_starts_a_private_server_and_stops_it_at_exit(tmp_path):
    session = _private_session(tmp_path, then="")
    pids, output = _read_pids(session)
    rest, _ = session.communicate(timeout=60)
    output += rest
    assert "connected to a private `lmjupyter serve` started for this kernel" in output
    assert "model  version  state" in output and "<table" not in output  # text, not HTML, in a terminal
    assert pids["answer"] == "hi"
    for pid in [pids["server"], *pids["ranks"]]:
        wait_until(lambda: not alive(pid), 30, message=f"pid {pid} to end after IPython exited")


def test_a_killed_kernel_takes_its_private_server_along(tmp_path):
    session = _private_session(tmp_path, then="import time; time.sleep(300)")
    pids, _ = _read_pids(session)
    session.send_signal(signal.SIGKILL)  # no atexit: the parent-death signal must do it
    session.wait(10)
    for pid in [pids["server"], *pids["ranks"]]:
        wait_until(lambda: not alive(pid), 30, message=f"pid {pid} to end after the kernel was killed")
