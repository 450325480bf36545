"""The %lmserve magics in a kernel started by a real Jupyter server (so discovery is real)."""
import pytest

from jupyterproc import execute_notebook, make_notebook, outputs_text

pytestmark = pytest.mark.timeout(240)

CELLS = {
    "load": "%load_ext lmjupyter",
    "status": "%lmserve status",
    "docs": ("from lmjupyter.magics.core import LMServeMagics\n"
             "print(LMServeMagics.lmserve.__doc__)"),
    "bad_config": "%%lmserve config bad\nminWorkers: 1\nbatchSize: eight\n",
    "syntax": "%%lmserve handler broken\nclass Broken:\n    def handle(self, requests, ctx)\n        return requests\n",
    "import": "%%lmserve handler missing\nimport not_a_module_anywhere\n",
    "no_model": '%lmserve query nosuch "hello"',
    "no_handler": "%lmserve deploy ghost",
    "usage": "%lmserve scale",
    "unknown": "%lmserve frobnicate",
    "runtime_file": ("import os\nfrom lmjupyter import discovery\n"
                     "env = {k: v for k, v in os.environ.items() if not k.startswith('LMJUPYTER_')}\n"
                     "found = discovery.discover(environ=env, start_private=False)\n"
                     "print(found.source, found.url == discovery.current().url)"),
    "echo_handler": ("%%lmserve handler echo\nfrom lmjupyter.handlers import BaseHandler\n\n"
                     "class Echo(BaseHandler):\n    pass\n"),
    "deploy": "ranks = 1\n%lmserve deploy echo --nproc {ranks}",
    "json_query": 'answer = %lmserve query echo {"a": [1, 2], "b": "{x}"}\nprint(repr(answer))',
    "text_query": "%lmserve query echo just some words",
    "logs": "%lmserve logs echo --rank 0 --tail 3",
    "model_status": "%lmserve status echo",
    "panel": ("from lmjupyter.widgets import ControlPanel\nimport time\n"
              "panel = ControlPanel(interval=0.5)\n"
              "before = len(panel.history.points); time.sleep(1.5)\n"
              "idle = len(panel.history.points) == before  # no view shown: no polling\n"
              "panel._view_count = 1; time.sleep(1.6)\n"
              "polled = len(panel.history.points) > before\n"
              "panel.close(); panel._thread.join(3)\n"
              "print('idle', idle, 'polled', polled, 'stopped', not panel._thread.is_alive())\n"
              "print(panel.models_view.value)"),
    "panel_actions": ("actions = ControlPanel(interval=30)\n"
                      "actions.name.value = 'viapanel'\n"
                      "actions.handler.value = 'lmserve/echo/handler.py'\n"
                      "actions.editor.text = 'deviceType: cpu\\nmaxWorkers: 2\\ntorchrun:\\n  nproc-per-node: 1\\n'\n"
                      "print(actions._deploy())\n"
                      "actions.refresh()\n"
                      "actions.model_select.value = 'viapanel'\n"
                      "actions.query_input.value = '\"streamed?\"'\n"
                      "print(actions._query())\n"
                      "print(actions.query_output.value)\n"
                      "actions.workers.value = 2\n"
                      "print(actions._scale())\n"
                      "print(actions._undeploy())\n"
                      "actions.close()"),
    "archive": ("import subprocess, sys\n"
                "subprocess.run([sys.executable, '-m', 'lmjupyter.cli', 'archive', '--model-name', 'packed',\n"
                "                '--handler', 'lmserve/echo/handler.py', '--export-path', '.', '--force'], check=True)\n"
                "%lmserve deploy --archive packed.tar.gz\n"  # no NAME: the archive's own
                "packed = %lmserve query packed \"from an archive\"\n"
                "print(repr(packed))\n"
                "%lmserve undeploy packed"),
    "undeploy": "%lmserve undeploy echo",
    "boom_handler": ("%%lmserve handler boom\nfrom lmjupyter.handlers import BaseHandler\n\n"
                     "class Boom(BaseHandler):\n    def initialize(self, ctx):\n"
                     "        raise RuntimeError('no weights here')\n"),
    "boom_deploy": "%lmserve deploy boom --nproc 1",
    "reconnect": "%lmserve connect",
}
ERRORS = {"bad_config", "syntax", "import", "no_model", "no_handler", "usage", "unknown", "boom_deploy"}


@pytest.fixture(scope="module")
def cells(jupyter):
    nb = execute_notebook(jupyter, make_notebook(*CELLS.values()), "magics/magics.ipynb", timeout=120,
                          allow_errors=True)
    return {name: (cell, outputs_text(cell)) for name, cell in zip(CELLS, nb.cells)}


def _error(cell) -> dict | None:
    return next((o for o in cell.outputs if o.output_type == "error"), None)


def test_cells_fail_exactly_where_expected(cells):
    failed = {name for name, (cell, text) in cells.items() if _error(cell) or "UsageError" in text}
    assert failed == ERRORS, {name: cells[name][1][-500:] for name in failed ^ ERRORS}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_are_one_message_not_a_traceback(cells, name):
    cell, text = cells[name]
    assert "Traceback" not in text and "----> " not in text, text
    assert "UsageError" in text


def test_status_names_the_jupyter_server_extension(cells):
    text = cells["status"][1]
    assert "connected to the Jupyter server extension of this kernel's Jupyter server" in text
    assert "this kernel's parent" in text and "no models deployed" in text


def test_docstring_covers_every_subcommand(cells):
    from lmjupyter.magics.core import SUBCOMMANDS

    text = cells["docs"][1]
    for sub in SUBCOMMANDS:
        assert f"lmserve {sub}" in text, sub


def test_config_errors_name_key_and_line(cells):
    text = cells["bad_config"][1]
    assert "batchSize = 'eight' (line 2)" in text and "expected an int" in text


def test_handler_errors_show_inline(cells):
    assert "SyntaxError" in cells["syntax"][1] and "line 2" in cells["syntax"][1]
    assert "No module named 'not_a_module_anywhere'" in cells["import"][1]
    assert "line 1: import not_a_module_anywhere" in cells["import"][1]


def test_refusals_are_explained(cells):
    assert "no model named 'nosuch' is deployed (HTTP 404)" in cells["no_model"][1]
    assert "no handler for ghost" in cells["no_handler"][1]
    assert "the following arguments are required: name, workers" in cells["usage"][1]
    assert "unknown subcommand 'frobnicate'" in cells["unknown"][1]


def test_runtime_file_discovery_matches_the_parent_server(cells):
    assert cells["runtime_file"][1].split() == ["jupyter-runtime-file", "True"]


def test_deploy_query_logs_status(cells):
    deploy = cells["deploy"][1]
    assert "echo: ready" in deploy and "1/1 ranks ready" in deploy and "<progress" in deploy
    assert "{'a': [1, 2], 'b': '{x}'}" in cells["json_query"][1]  # JSON reaches the server unchanged
    assert "'just some words'" in cells["text_query"][1]
    assert "rank 0/1 ready" in cells["logs"][1]
    assert "echo v1: ready, 1 worker(s) x 1 rank(s) on cpu" in cells["model_status"][1]
    assert "undeployed echo: 1 worker(s), 1 rank process(es) ended" in cells["undeploy"][1]


def test_deploy_from_an_archive(cells):
    text = cells["archive"][1]
    assert "packed: ready" in text and "'from an archive'" in text and "undeployed packed" in text


def test_panel_buttons_deploy_query_scale_undeploy(cells):
    text = cells["panel_actions"][1]
    assert "viapanel is ready" in text
    assert "viapanel answered in" in text and "streamed?" in text
    assert "viapanel: 2 worker(s)" in text and "undeployed viapanel" in text


def test_connect_discovers_again(cells):
    assert "connected to the Jupyter server extension" in cells["reconnect"][1]
    assert "/jh/" in cells["reconnect"][1]  # the server's base_url reaches the kernel


def test_failed_start_shows_the_reason(cells):
    text = cells["boom_deploy"][1]
    assert "RuntimeError: no weights here" in text and "%lmserve logs boom" in text


def test_panel_polls_only_while_shown_and_stops_when_closed(cells):
    text = cells["panel"][1]
    assert "idle True polled True stopped True" in text
    assert 'data-state="ready"' in text and ">echo<" in text
