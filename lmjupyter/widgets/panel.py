"""``%lmserve panel``: the control panel of one lmjupyter server, as ipywidgets.

::

    from lmjupyter.widgets import ControlPanel
    panel = ControlPanel()          # finds the server like %lmserve does
    panel                           # models, GPU map, config editor, actions, query box, live plot
    panel.close()                   # stops its refresh thread

A daemon thread refreshes the panel every ``interval`` seconds (0.5..30) while a
view of it is displayed (ipywidgets' ``_view_count``), and ends when the panel is
closed. Actions (deploy, scale, undeploy, query) run in a second thread, so the
kernel stays free and the panel keeps refreshing while workers start.
"""
from __future__ import annotations

import html
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import ipywidgets as widgets
import yaml

from lmjupyter import discovery
from lmjupyter.client import LMServeError
from lmjupyter.widgets.editor import DEFAULT_YAML, ConfigEditor
from lmjupyter.widgets.metrics import MetricsHistory, summary
from lmjupyter.widgets.plot import line_chart
from lmjupyter.widgets.render import Table, models_table, nodes_table, workers_table

MIN_INTERVAL, MAX_INTERVAL = 0.5, 30.0
ALL_MODELS = "(all models)"


class ControlPanel(widgets.VBox):
    def __init__(self, connection: discovery.Connection | None = None, client=None, interval: float = 2.0):
        self.connection = connection or discovery.current()
        self.client = client or self.connection.client(timeout=600.0)
        self.interval = min(max(float(interval), MIN_INTERVAL), MAX_INTERVAL)
        self.history = MetricsHistory()
        self.models: list[dict] = []
        self._first = True
        self._stop = threading.Event()
        self._lock = threading.RLock()  # refresh() sets the dropdown, which calls _selected
        self._actions = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmj-panel-action")
        self._build()
        self._view_count = 0  # ask the frontend to count views: poll only while one is shown
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="lmj-panel-refresh", daemon=True)
        self._thread.start()

    # ---- layout ---------------------------------------------------------------------------------
    def _build(self) -> None:
        self.header = widgets.HTML(self._header_html())
        self.models_view = widgets.HTML()
        self.models_view.add_class("lmj-panel-models")
        self.model_select = widgets.Dropdown(description="model", options=[ALL_MODELS])
        self.model_select.observe(self._selected, names="value")
        self.workers_view = widgets.HTML()
        self.workers_view.add_class("lmj-panel-workers")
        self.gpus_view = widgets.HTML()
        self.plot = widgets.HTML()
        self.plot.add_class("lmj-panel-plot")
        self.message = widgets.HTML()
        self.message.add_class("lmj-panel-message")

        self.name = widgets.Text(description="name", placeholder="model name")
        self.handler = widgets.Text(description="handler", placeholder="handler.py or module:Class")
        self.model_dir = widgets.Text(description="model dir", placeholder="(optional) model folder")
        self.editor = ConfigEditor(DEFAULT_YAML)
        self.deploy_button = widgets.Button(description="Deploy", button_style="primary", icon="play")
        self.workers = widgets.BoundedIntText(value=1, min=0, max=256, description="workers",
                                              layout=widgets.Layout(width="170px"))
        self.scale_button = widgets.Button(description="Scale", icon="arrows-v")
        self.undeploy_button = widgets.Button(description="Undeploy", button_style="danger", icon="stop")
        self.deploy_button.on_click(lambda _: self._run(self._deploy))
        self.scale_button.on_click(lambda _: self._run(self._scale))
        self.undeploy_button.on_click(lambda _: self._run(self._undeploy))
        deploy_tab = widgets.VBox([
            widgets.HBox([self.name, self.handler]), self.model_dir, self.editor,
            widgets.HBox([self.deploy_button, self.workers, self.scale_button, self.undeploy_button])])

        self.query_input = widgets.Textarea(value='"hello lmjupyter"', placeholder="JSON, else text",
                                            layout=widgets.Layout(width="100%", height="60px"))
        self.stream = widgets.Checkbox(value=True, description="stream")
        self.query_button = widgets.Button(description="Send", icon="paper-plane")
        self.query_button.on_click(lambda _: self._run(self._query))
        self.query_output = widgets.HTML()
        self.query_output.add_class("lmj-panel-answer")
        query_tab = widgets.VBox([self.query_input, widgets.HBox([self.query_button, self.stream]),
                                  self.query_output])

        tabs = widgets.Tab(children=[deploy_tab, query_tab], titles=("Deploy / config", "Query"))
        super().__init__([self.header, self.models_view, self.model_select, self.workers_view, self.gpus_view,
                          self.plot, tabs, self.message])
        self.add_class("lmj-panel")

    def _header_html(self) -> str:
        return (f"<b>lmjupyter</b> &mdash; {html.escape(self.connection.describe())} "
                f"<small>(refresh every {self.interval:g}s while shown)</small>")

    # ---- refresh --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Fetch models, GPUs and metrics once and redraw (also what the thread does)."""
        with self._lock:
            models = self.client.list()
            metrics = self.client.metrics()
            gpus = self.client.gpus()
            nodes = _nodes(self.client)
            self.models = models
            self.history.add(metrics)
            self.models_view.value = models_table(models).html()
            names = [ALL_MODELS] + [m["name"] for m in models]
            if list(self.model_select.options) != names:
                keep = self.model_select.value if self.model_select.value in names else ALL_MODELS
                if self._first and len(models) == 1:
                    keep = models[0]["name"]  # one model: show it, and its config in the editor
                self.model_select.options = names
                self.model_select.value = keep
            self._first = False
            self._draw_selected()
            several = len(nodes) > 1  # agents on other hosts: the map shows each node, then its GPUs
            self.gpus_view.value = ((nodes_table(nodes).html() if several else "")
                                    + (_gpus_table(gpus, by_node=several).html() if gpus else ""))

    def _draw_selected(self) -> None:
        name = self.model_select.value
        chosen = [m for m in self.models if name in (ALL_MODELS, m["name"])]
        self.workers_view.value = "".join(workers_table(m).html() for m in chosen)
        series = self.history.series(None if name == ALL_MODELS else name)
        latency = {k: series[k] for k in ("p50", "p90", "p99")}
        totals = summary(self.history, None if name == ALL_MODELS else name)
        self.plot.value = (f"<div><small>{html.escape(totals)}</small></div>"
                           + line_chart(series["t"], latency, f"latency of {name}", "ms")
                           + line_chart(series["t"], {"requests/s": series["rps"]}, "throughput", "/s"))

    def _selected(self, change) -> None:
        with self._lock:
            model = next((m for m in self.models if m["name"] == change["new"]), None)
            if model is not None:
                self.name.value = model["name"]
                self.handler.value = model.get("handler") or ""
                self.model_dir.value = model.get("model_dir") or ""
                self.editor.text = yaml.safe_dump(_editable(model.get("config") or {}), sort_keys=False)
                self.workers.value = model.get("target_workers", len(model.get("workers", [])))
            self._draw_selected()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            if self._view_count == 0:
                continue  # not shown anywhere (None: the frontend does not count views; poll anyway)
            try:
                self.refresh()
            except Exception as exc:  # the server may be restarting: say so and keep polling
                self.message.value = f'<span style="color:#cf222e">refresh failed: {html.escape(str(exc))}</span>'

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Stop polling and close the widgets."""
        self._stop.set()
        self._actions.shutdown(wait=False, cancel_futures=True)
        for child in self._descendants():
            child.close()
        super().close()

    def _descendants(self):
        stack = list(self.children)
        while stack:
            widget = stack.pop()
            stack.extend(getattr(widget, "children", ()))
            yield widget

    # ---- actions --------------------------------------------------------------------------------
    def _run(self, action) -> None:
        self._say(f"&#8987; {action.__name__.strip('_')}&hellip;", "#9a6700")
        self._actions.submit(self._guarded, action)

    def _guarded(self, action) -> None:
        try:
            text = action()
            self._say(html.escape(text), "#1a7f37")
        except LMServeError as exc:
            self._say(html.escape(f"{action.__name__.strip('_')}: {exc}"), "#cf222e")
        except Exception as exc:
            self._say(html.escape(f"{action.__name__.strip('_')}: {type(exc).__name__}: {exc}"), "#cf222e")
        try:
            self.refresh()
        except Exception:
            pass

    def _say(self, markup: str, color: str) -> None:
        self.message.value = f'<span style="color:{color}">{markup}</span>'

    def _deploy(self) -> str:
        name = self.name.value.strip()
        if not name:
            raise ValueError("give the model a name")
        if not self.editor.validate():
            raise ValueError("fix the config first (see the message under the editor)")
        handler = self.handler.value.strip() or None
        if handler and (handler.endswith(".py") or os.sep in handler):
            handler = os.path.abspath(os.path.expanduser(handler))
        model_dir = os.path.abspath(os.path.expanduser(self.model_dir.value.strip())) \
            if self.model_dir.value.strip() else None
        self.client.deploy(name, handler, model_dir=model_dir, config=self.editor.text, wait=False)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not self._stop.is_set():
            description = self.client.describe(name)
            if description["state"] in ("ready", "failed"):
                break
            time.sleep(0.5)
            self.refresh()
        if description["state"] == "failed":
            raise RuntimeError((description.get("error") or {}).get("message", "deploy failed"))
        return f"{name} is {description['state']}"

    def _target(self) -> str:
        name = self.model_select.value if self.model_select.value != ALL_MODELS else self.name.value.strip()
        if not name:
            raise ValueError("pick a model in the list above")
        return name

    def _scale(self) -> str:
        name = self._target()
        description = self.client.scale(name, int(self.workers.value))
        return f"{name}: {len(description['workers'])} worker(s)"

    def _undeploy(self) -> str:
        name = self._target()
        self.client.undeploy(name)
        return f"undeployed {name}"

    def _query(self) -> str:
        name = self._target()
        text = self.query_input.value.strip()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        started = time.perf_counter()
        if not self.stream.value:
            answer = self.client.predict(name, payload)
            self._show_answer([], answer)
            return f"{name} answered in {time.perf_counter() - started:.3f}s"
        partials, answer = [], None
        stream = self.client.stream(name, payload)
        while True:
            try:
                partials.append(next(stream))
            except StopIteration as stop:
                answer = stop.value
                break
            self._show_answer(partials, None)
        self._show_answer(partials, answer)
        return f"{name} answered in {time.perf_counter() - started:.3f}s ({len(partials)} partial results)"

    def _show_answer(self, partials: list, answer) -> None:
        streamed = "".join(p if isinstance(p, str) else (p.get("text") or "") if isinstance(p, dict)
                           else json.dumps(p) for p in partials if p is not None)
        final = "" if answer is None else (answer if isinstance(answer, str) else json.dumps(answer, indent=1))
        self.query_output.value = (
            (f"<div><small>streamed</small><pre>{html.escape(streamed)}</pre></div>" if partials else "")
            + (f"<div><small>answer</small><pre>{html.escape(final)}</pre></div>" if answer is not None else ""))


def _editable(config: dict) -> dict:
    """The description's config minus keys at their defaults that only add noise."""
    return {k: v for k, v in config.items() if v not in ({}, None)}


def _nodes(client) -> list[dict]:
    """The server's nodes; [] from a server without the route (older than several-host groups)."""
    try:
        return client.nodes()
    except LMServeError as exc:
        if exc.status == 404:
            return []
        raise


def _gpus_table(gpus: list[dict], by_node: bool = False) -> Table:
    rows = []
    for gpu in gpus:
        holder = gpu.get("holder")
        held = (f"{holder['model']} worker {holder['worker']}", "busy") if holder else ("free", "ready")
        rows.append(([gpu.get("node", "")] if by_node else []) + [gpu["id"], held])
    return Table((["node"] if by_node else []) + ["GPU", "held by"], rows, title="GPU map", css_class="lmj-gpus")
