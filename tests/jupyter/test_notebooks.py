"""The notebooks in notebooks/, executed with nbclient in kernels a real Jupyter server started."""
import ast
import time
from pathlib import Path

import nbformat
import pytest

from jupyterproc import execute_notebook, outputs_text

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _run(jupyter, name: str, timeout: int = 180):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    started = time.monotonic()
    execute_notebook(jupyter, nb, name, timeout=timeout)
    return nb, time.monotonic() - started


@pytest.mark.timeout(240)
def test_quickstart(jupyter):
    nb, elapsed = _run(jupyter, "quickstart.ipynb")
    texts = [outputs_text(c) for c in nb.cells if c.cell_type == "code"]
    everything = "\n".join(texts)
    assert "connected to the Jupyter server extension of this kernel's Jupyter server" in everything
    assert "shout: ready" in everything and "4/4 ranks ready" in everything
    assert "HELLO FROM THE NOTEBOOK! (2 ranks)" in everything
    assert "ONE WORD AT A TIME! (2 ranks)" in everything
    assert "shout v1: ready, 1 worker(s) x 2 rank(s) on cpu" in everything  # after scale 1
    panels = [o for c in nb.cells for o in c.get("outputs", []) if WIDGET_VIEW in o.get("data", {})]
    assert len(panels) == 1
    assert "undeployed shout: 1 worker(s), 2 rank process(es) ended" in texts[-1]
    assert jupyter.lmserve("GET", "models").json()["models"] == []
    assert elapsed < 180, f"the quickstart took {elapsed:.0f}s"


def _large_model_ready() -> str | None:
    try:
        from lmjupyter.models.tiny import build_tiny_llama  # noqa: F401
        import lmjupyter.handlers.causal_lm  # noqa: F401
    except ImportError as exc:
        return f"the built-in causal-LM handler or tiny models are missing: {exc}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_large_model(jupyter):
    missing = _large_model_ready()
    if missing:
        pytest.skip(missing)
    nb, elapsed = _run(jupyter, "large_model.ipynb", timeout=300)
    everything = "\n".join(outputs_text(c) for c in nb.cells if c.cell_type == "code")
    assert "llama-pp: ready" in everything and "llama-tp: ready" in everything
    chat = next(c for c in nb.cells if c.cell_type == "code" and "openai_client.chat" in c.source)
    assert "openai chat: " in outputs_text(chat), outputs_text(chat)
    answer = ast.literal_eval(chat.outputs[-1]["data"]["text/plain"])  # the cell's value: the answer, as repr
    magic = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("%lmserve chat"))
    assert "".join(o.get("text", "") for o in magic.outputs).startswith(answer + "\n")  # streamed, the same text
    assert "undeployed llama-tp" in everything
    assert jupyter.lmserve("GET", "models").json()["models"] == []
