"""The ``%lmserve`` magics: parse a subcommand, call the REST API, show the answer."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import time

import yaml
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.utils.text import DollarFormatter
from IPython.display import display

from lmjupyter import discovery
from lmjupyter.client import LMServeError
from lmjupyter.magics import workspace
from lmjupyter.magics.chat import Conversations
from lmjupyter.magics.live import Live, deploy_progress, print_partial
from lmjupyter.widgets.render import logs_text, models_table, nodes_table, plan_table, workers_table

POLL_INTERVAL = 0.3
TERMINAL_STATES = ("ready", "failed")


# IPython shows a UsageError as one line, "UsageError: ...", with no traceback, and the cell still
# fails (so notebooks run by nbclient stop there). It checks the exact type, so no subclass.
MagicError = UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise MagicError(f"{self.prog}: {message}\n{self.format_usage().strip()}")

    def exit(self, status=0, message=None):
        raise _HelpShown()


class _HelpShown(Exception):
    pass


def _parser(prog: str, *arguments: tuple) -> _Parser:
    parser = _Parser(prog=f"%lmserve {prog}", add_help=True)
    for names, options in arguments:
        parser.add_argument(*names, **options)
    return parser


PARSERS = {
    "deploy": _parser(
        "deploy",
        (("name",), {"nargs": "?", "help": "model name (with --archive: default, the archive's own)"}),
        (("--handler",), {"help": "a .py file or module:Class (default: ./lmserve/NAME/handler.py)"}),
        (("--config",), {"help": "a model-config.yaml (default: ./lmserve/NAME/model-config.yaml)"}),
        (("--model-dir",), {"help": "the model folder (a Hugging Face folder needs no handler)"}),
        (("--archive",), {"help": "a model archive (.tar.gz, .zip, .mar) or an unpacked archive folder"}),
        (("--workers",), {"type": int, "help": "worker groups to start (default: minWorkers)"}),
        (("--nproc",), {"type": int, "help": "ranks per worker (torchrun nproc-per-node)"}),
        (("--version",), {"help": "version label of this deployment"}),
        (("--dry-run",), {"action": "store_true", "help": "show the GPU plan and torchrun commands only"}),
        (("--no-wait",), {"action": "store_true", "help": "return at once instead of following start-up"}),
    ),
    "status": _parser("status", (("name",), {"nargs": "?"})),
    "scale": _parser("scale", (("name",), {}), (("workers",), {"type": int})),
    "undeploy": _parser("undeploy", (("name",), {})),
    "logs": _parser("logs", (("name",), {}), (("--rank",), {"type": int}),
                    (("--tail",), {"type": int, "default": 40})),
    "nodes": _parser("nodes"),
    "panel": _parser("panel", (("--interval",), {"type": float, "default": 2.0})),
    "connect": _parser("connect", (("url",), {"nargs": "?"}), (("--token",), {})),
    "handler": _parser("handler", (("name",), {})),
    "config": _parser("config", (("name",), {})),
}


@magics_class
class LMServeMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self.panels = []
        self.conversations = Conversations()

    @no_var_expand  # JSON like {"a": 1} must reach a query unchanged; see _expand
    @line_cell_magic
    def lmserve(self, line: str, cell: str | None = None):
        """Serve models from this notebook (a thin client of the lmjupyter REST API).

        Cell magics (the cell body is the content)::

          %%lmserve handler NAME   save the cell as ./lmserve/NAME/handler.py and import it
                                   once in a subprocess, so syntax and import errors show now
          %%lmserve config NAME    validate the cell as model-config.yaml (errors name the key
                                   and line) and save it as ./lmserve/NAME/model-config.yaml
          %%lmserve query NAME [--stream]
                                   send the cell body as one request (JSON, else text)
          %%lmserve chat NAME [options]
                                   send the cell body as the next chat message

        Line magics::

          %lmserve deploy NAME [--handler PATH|module:Class] [--config FILE] [--model-dir DIR]
                               [--workers N] [--nproc N] [--version V] [--dry-run] [--no-wait]
                 start NAME's workers; defaults are what the cell magics saved for NAME.
                 A progress bar follows every rank until the model is ready, with the
                 phases each rank went through as they happen (starting ranks, joining
                 process group, importing handler, initializing, and what the handler
                 reports: loading weights n/N, capturing graphs...), then the worker
                 table shows each rank's pid and device. --dry-run shows the GPU
                 plan and torchrun commands and starts nothing.
          %lmserve deploy --archive A.mar   an archive (a TorchServe .mar too) under its own
                 model name and version, from its manifest.
          %lmserve query NAME DATA [--stream]
                 one request; DATA is JSON if it parses, else text. --stream prints the
                 handler's partial results as they arrive. Returns the answer.
          %lmserve chat NAME [--new] [--max-tokens N] [--temperature T] [--top-p P] [--seed S] MESSAGE
                 chat with a causal LM (its tokenizer's chat template, through the OpenAI
                 route); the answer streams as it is written, and each call continues the
                 conversation with NAME until --new
          %lmserve status [NAME]   which server this kernel uses and its models; with NAME,
                                   the model's workers, ranks, pids and devices
          %lmserve scale NAME N    run N workers (within minWorkers..maxWorkers)
          %lmserve undeploy NAME   stop the model; every one of its processes ends
          %lmserve logs NAME [--rank R] [--tail N]
                                   the last N lines of each rank's log (default 40)
          %lmserve nodes           this server's host and the `lmjupyter node` agents on other
                                   hosts: address, state (online or lost), GPUs, worker groups
          %lmserve panel [--interval S]
                                   the control panel: models, GPU map, config editor,
                                   deploy/scale/undeploy, query box, live latency plot
          %lmserve connect [URL] [--token T]
                                   use another server; without URL, discover again

        The server is found without configuration: the Jupyter server extension of
        the server running this kernel, else LMJUPYTER_URL/LMJUPYTER_TOKEN, else a
        private ``lmjupyter serve`` started for this kernel (see lmjupyter.discovery).
        Arguments expand $name and {expression} from the notebook's variables, except a
        query's DATA, which is taken as written (JSON braces are not Python).
        Errors show as one message; ``%lmserve SUBCOMMAND --help`` shows its options.
        """
        words = line.split(None, 1)
        if not words:
            raise MagicError("%lmserve: give a subcommand: " + ", ".join(SUBCOMMANDS) + " (see %lmserve?)")
        command, rest = words[0], (words[1] if len(words) > 1 else "")
        if command not in SUBCOMMANDS:
            raise MagicError(f"%lmserve: unknown subcommand {command!r}; expected one of {', '.join(SUBCOMMANDS)}")
        if command in ("handler", "config") and cell is None:
            raise MagicError(f"%lmserve {command} is a cell magic: put `%%lmserve {command} NAME` on the first "
                             "line of a cell and the content below it")
        if command not in ("query", "chat"):  # a request is taken literally: JSON braces are not Python
            rest = self._expand(rest)
        try:
            return getattr(self, "_" + command)(rest, cell)
        except _HelpShown:
            return None
        except LMServeError as exc:
            raise MagicError(f"%lmserve {command}: {_server_message(exc)}") from None
        except discovery.DiscoveryError as exc:
            raise MagicError(f"%lmserve {command}: {exc}") from None
        except (ValueError, OSError) as exc:
            raise MagicError(f"%lmserve {command}: {exc}") from None
        except KeyboardInterrupt:
            print(f"%lmserve {command}: interrupted (the server carries on; see %lmserve status)")
            return None

    # ---- helpers --------------------------------------------------------------------------------
    def _expand(self, text: str) -> str:
        """IPython's $name and {expression} expansion, from the user's namespace."""
        try:
            return DollarFormatter().vformat(text, args=[], kwargs=self.shell.user_ns)
        except Exception:
            return text

    @staticmethod
    def client():
        return discovery.connect()

    @staticmethod
    def _args(command: str, rest: str):
        try:
            words = shlex.split(rest)
        except ValueError as exc:
            raise MagicError(f"%lmserve {command}: {exc}") from None
        return PARSERS[command].parse_args(words)

    # ---- cell magics ----------------------------------------------------------------------------
    def _handler(self, rest, cell):
        name = self._args("handler", rest).name
        path = workspace.save(workspace.handler_file(name), cell)
        result = workspace.check_handler(path)
        if not result["ok"]:
            where = f"\n  at {result['where']}" if result.get("where") else ""
            raise MagicError(f"handler {name} saved to {workspace.relative(path)}, but importing it failed:\n"
                             f"{result['error']}{where}")
        bases = f" ({', '.join(result['bases'])})" if result.get("bases") else ""
        streams = "; streams partial results" if result.get("streams") else ""
        print(f"handler {name}: {result['class']}{bases} saved to {workspace.relative(path)}; "
              f"imports cleanly{streams}")

    def _config(self, rest, cell):
        from lmjupyter.config import ConfigError, load_config

        name = self._args("config", rest).name
        path = workspace.config_file(name)
        try:
            config, warnings = load_config(cell, filename=workspace.relative(path))
        except ConfigError as exc:
            raise MagicError(f"config {name} not saved: {exc}") from None
        workspace.save(path, cell)
        for warning in warnings:
            print(f"warning: {warning}")
        print(f"config {name}: saved to {workspace.relative(path)}: {config.deviceType or 'default device'}, "
              f"workers {config.minWorkers}..{config.maxWorkers}, {config.nproc} rank(s) per worker, "
              f"batchSize {config.batchSize}")

    # ---- deploy ---------------------------------------------------------------------------------
    def _deploy(self, rest, cell):
        args = self._args("deploy", rest)
        if args.name is None and not args.archive:
            raise MagicError("%lmserve deploy: give the model NAME (it may be left out only with --archive)")
        name = workspace.check_name(args.name) if args.name is not None else None
        handler = args.handler or (_existing(workspace.handler_file(name)) if name else None)
        if handler and (handler.endswith(".py") or os.sep in handler):
            handler = os.path.abspath(os.path.expanduser(handler))
        model_dir = os.path.abspath(os.path.expanduser(args.model_dir)) if args.model_dir else None
        config_path = args.config or (_existing(workspace.config_file(name)) if name else None)
        if model_dir and not args.config and os.path.isfile(os.path.join(model_dir, "model-config.yaml")):
            config_path = None  # the engine reads the model folder's own config
        archive = os.path.abspath(os.path.expanduser(args.archive)) if args.archive else None
        if archive:
            handler = args.handler  # an archive names its own handler and config
            config_path = args.config
        if not handler and not model_dir and not archive:
            raise MagicError(f"%lmserve deploy: no handler for {name}: write one with `%%lmserve handler {name}`, "
                             "or pass --handler FILE.py|module:Class, --archive PATH, or --model-dir of a Hugging Face model")
        body = {"model_dir": model_dir, "archive": archive, "workers": args.workers, "version": args.version}
        if args.nproc is not None:
            body["config"] = _with_nproc(config_path, model_dir, args.nproc)
        elif config_path:
            body["config_file"] = os.path.abspath(os.path.expanduser(config_path))
        client = self.client()
        body = {k: v for k, v in body.items() if v is not None}
        if args.dry_run:
            display(plan_table(client.deploy(name, handler, dry_run=True, **body)))
            return None
        started = time.monotonic()
        description = client.deploy(name, handler, wait=False, **body)
        name = description["name"]  # an archive's own name when none was given
        if args.no_wait:
            display(workers_table(description))
            return None
        live = Live()
        events, last = _start_events(client, name, description)
        while description["state"] not in TERMINAL_STATES:
            live.update(deploy_progress(description, time.monotonic() - started, events))
            time.sleep(POLL_INTERVAL)
            description = client.describe(name)
            last = _more_events(client, name, description.get("version"), events, last)
        _more_events(client, name, description.get("version"), events, last)
        live.update(deploy_progress(description, time.monotonic() - started, events))
        display(workers_table(description))
        if description["state"] == "failed":
            error = description.get("error") or {}
            tail = [ln for ln in (error.get("traceback") or "").strip().splitlines() if ln.strip()][-4:]
            raise MagicError(f"%lmserve deploy: {error.get('message', 'failed')}"
                             + ("\n" + "\n".join(tail) if tail else "")
                             + f"\n(see %lmserve logs {name})")
        return None

    # ---- requests -------------------------------------------------------------------------------
    def _query(self, rest, cell):
        words = rest.split(None, 1)
        if not words:
            raise MagicError("%lmserve query: give the model name, then the request (JSON or text)")
        name, data = words[0], (words[1] if len(words) > 1 else "")
        data, stream = data.strip(), False
        if data == "--stream" or data.endswith(" --stream"):
            data, stream = data[: -len("--stream")].strip(), True
        elif data.startswith("--stream "):
            data, stream = data[len("--stream "):].strip(), True
        if cell is not None:
            if data:
                raise MagicError("%%lmserve query: the request is the cell body; nothing may follow the name "
                                 "but --stream")
            data = cell
        payload = _parse_payload(data)
        client = self.client()
        if not stream:
            return client.predict(workspace.check_name(name), payload)
        partials = client.stream(workspace.check_name(name), payload)
        printed = False
        while True:
            try:
                partial = next(partials)
            except StopIteration as stop:
                if printed:
                    print(flush=True)
                return stop.value
            printed = print_partial(partial) or printed

    def _chat(self, rest, cell):
        self.conversations.chat(self.client(), rest, cell)

    def _status(self, rest, cell):
        args = self._args("status", rest)
        connection = discovery.current()
        client = connection.client()
        if args.name:
            display(workers_table(client.describe(args.name)))
            return None
        health = client.health()
        table = models_table(client.list())
        table.title = f"lmjupyter {health.get('version', '?')}: connected to {connection.describe()}"
        display(table)
        return None

    def _scale(self, rest, cell):
        args = self._args("scale", rest)
        description = self.client().scale(args.name, args.workers)
        display(workers_table(description))

    def _undeploy(self, rest, cell):
        args = self._args("undeploy", rest)
        client = self.client()
        before = client.describe(args.name)
        client.undeploy(args.name)
        pids = [r["pid"] for w in before.get("workers", []) for r in w.get("ranks", [])]
        print(f"undeployed {args.name}: {len(before.get('workers', []))} worker(s), {len(pids)} rank process(es) ended")

    def _logs(self, rest, cell):
        args = self._args("logs", rest)
        print(logs_text(self.client().logs(args.name, rank=args.rank, tail=args.tail)))

    def _nodes(self, rest, cell):
        self._args("nodes", rest)
        display(nodes_table(self.client().nodes()))

    def _panel(self, rest, cell):
        from lmjupyter.widgets.panel import ControlPanel

        args = self._args("panel", rest)
        panel = ControlPanel(connection=discovery.current(), interval=args.interval)
        self.panels = [p for p in self.panels if not p.closed] + [panel]
        display(panel)

    def _connect(self, rest, cell):
        args = self._args("connect", rest)
        if args.url:
            connection = discovery.use(args.url, args.token)
        else:
            discovery.reset()
            connection = discovery.current()
        health = connection.client().health()
        print(f"connected to {connection.describe()}: lmjupyter {health.get('version', '?')}")


SUBCOMMANDS = ("handler", "config", "deploy", "query", "chat", "status", "scale", "undeploy", "logs", "nodes",
               "panel",
               "connect")


def _start_events(client, name: str, description: dict) -> tuple[list[dict], int]:
    """The start-up events so far: a deploy makes a new model version, so all of them are this deploy's."""
    try:
        answer = client.events(name, 0, description.get("version"))
    except LMServeError:
        return [], 0  # a server without the events route: the progress bar alone
    return list(answer["events"]), answer["last"]


def _more_events(client, name: str, version, events: list[dict], last: int) -> int:
    try:
        answer = client.events(name, last, version)
    except LMServeError:
        return last
    events.extend(answer["events"])
    return answer["last"]


def _existing(path: str) -> str | None:
    return path if os.path.isfile(path) else None


def _with_nproc(config_path: str | None, model_dir: str | None, nproc: int) -> dict:
    """The config as a mapping with torchrun.nproc-per-node replaced (validated by the server)."""
    if config_path is None and model_dir and os.path.isfile(os.path.join(model_dir, "model-config.yaml")):
        config_path = os.path.join(model_dir, "model-config.yaml")
    config = {}
    if config_path:
        with open(os.path.expanduser(config_path), encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a mapping of model-config keys")
    torchrun = config.get("torchrun") if isinstance(config.get("torchrun"), dict) else {}
    config["torchrun"] = {**torchrun, "nproc-per-node": nproc}
    return config


def _parse_payload(text: str):
    text = text.strip()
    if not text:
        raise MagicError("%lmserve query: the request is empty")
    try:
        return json.loads(text)
    except ValueError:
        pass
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _server_message(exc: LMServeError) -> str:
    message = exc.message
    if exc.status in (401, 403):
        message += " (the server refused this kernel's credentials; see %lmserve status)"
    elif exc.status == 0:
        return message
    return f"{message} (HTTP {exc.status})"
