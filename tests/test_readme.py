"""The README's tour works as written: its handler file and its Python client code, against a real server."""
import os
import re
import subprocess
import sys

import pytest

from serverproc import ServerProcess

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
pytestmark = pytest.mark.timeout(120)


def _readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_readme_starts_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", _readme(), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["bash scripts/lab.sh", "bash .ci/run"]


def test_tour_handler_and_python_client_run(tmp_path):
    text = _readme()
    handler = re.search(r"cat > echo.py <<'PY'\n(.*?)\nPY\n", text, re.S).group(1)
    (tmp_path / "echo.py").write_text(handler)
    python = re.search(r"```python\n(from lmjupyter import Client\n.*?)```", text, re.S).group(1)
    server = ServerProcess(str(tmp_path), token="secret")
    try:
        code = python.replace("http://127.0.0.1:8765", server.url)
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stderr
        assert "ready" in result.stdout
        assert server.client.list() == []
    finally:
        server.stop()
