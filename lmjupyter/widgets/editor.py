"""The panel's model-config editor: YAML text and fields for the common keys, kept in step.

Every edit of the text is validated at once with :func:`lmjupyter.config.load_config`
(the error names the key and line); editing a field rewrites that key in the text.
"""
from __future__ import annotations

import html

import ipywidgets as widgets
import yaml

from lmjupyter.config import ConfigError, load_config

DEFAULT_YAML = """\
minWorkers: 1
maxWorkers: 2
deviceType: cpu
batchSize: 4
maxBatchDelay: 50
responseTimeout: 60
torchrun:
  nproc-per-node: 2
"""

# (path in the YAML, label, widget factory)
FIELDS = (
    (("minWorkers",), "minWorkers", lambda: widgets.BoundedIntText(min=0, max=256)),
    (("maxWorkers",), "maxWorkers", lambda: widgets.BoundedIntText(min=1, max=256)),
    (("batchSize",), "batchSize", lambda: widgets.BoundedIntText(min=1, max=4096)),
    (("maxBatchDelay",), "maxBatchDelay", lambda: widgets.BoundedIntText(min=0, max=600000)),
    (("responseTimeout",), "responseTimeout", lambda: widgets.BoundedIntText(min=1, max=86400)),
    (("deviceType",), "deviceType", lambda: widgets.Dropdown(options=["", "cpu", "gpu"])),
    (("torchrun", "nproc-per-node"), "nproc-per-node", lambda: widgets.BoundedIntText(min=1, max=1024)),
    (("parallelType",), "parallelType", lambda: widgets.Dropdown(options=["", "pp", "tp", "pptp"])),
)


class ConfigEditor(widgets.VBox):
    """``.text`` is the YAML; ``.valid`` says whether it passed validation."""

    def __init__(self, text: str = DEFAULT_YAML):
        self.area = widgets.Textarea(value=text, layout=widgets.Layout(width="100%", height="170px"))
        self.area.add_class("lmj-config-yaml")
        self.status = widgets.HTML()
        self.status.add_class("lmj-config-status")
        self.fields = {}
        for path, label, make in FIELDS:
            field = make()
            field.description = label
            field.style = {"description_width": "120px"}
            field.layout = widgets.Layout(width="240px")
            field.observe(self._field_changed, names="value")
            self.fields[path] = field
        self.valid = False
        self._syncing = False
        self.area.observe(lambda change: self.validate(), names="value")
        grid = widgets.GridBox(list(self.fields.values()),
                               layout=widgets.Layout(grid_template_columns="repeat(2, 250px)"))
        super().__init__([grid, self.area, self.status])
        self.validate()

    @property
    def text(self) -> str:
        return self.area.value

    @text.setter
    def text(self, value: str) -> None:
        self.area.value = value

    def validate(self) -> bool:
        try:
            config, warnings = load_config(self.area.value, filename="model-config.yaml")
        except ConfigError as exc:
            self.valid = False
            self.status.value = f'<span style="color:#cf222e">&#10007; {html.escape(str(exc))}</span>'
            return False
        self.valid = True
        notes = "".join(f"<br><span style='color:#9a6700'>{html.escape(w)}</span>" for w in warnings)
        self.status.value = (f'<span style="color:#1a7f37">&#10003; valid: {config.deviceType or "default device"}, '
                             f"workers {config.minWorkers}..{config.maxWorkers}, {config.nproc} rank(s) per worker"
                             f"</span>{notes}")
        self._fill_fields(yaml.safe_load(self.area.value) or {})
        return True

    def _fill_fields(self, data: dict) -> None:
        self._syncing = True
        try:
            for path, field in self.fields.items():
                value = _get(data, path)
                if isinstance(field, widgets.Dropdown):
                    field.value = value if value in field.options else ""
                elif isinstance(value, int) and not isinstance(value, bool):
                    field.value = max(field.min, min(field.max, value))
        finally:
            self._syncing = False

    def _field_changed(self, change) -> None:
        if self._syncing:
            return
        try:
            data = yaml.safe_load(self.area.value) or {}
        except yaml.YAMLError:
            return  # the text is broken: leave it to the user, the status says why
        if not isinstance(data, dict):
            return
        path = next(p for p, f in self.fields.items() if f is change["owner"])
        _set(data, path, change["new"] if change["new"] != "" else None)
        self.area.value = yaml.safe_dump(data, sort_keys=False)


def _get(data: dict, path: tuple):
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _set(data: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    if value is None:
        data.pop(path[-1], None)
    else:
        data[path[-1]] = value
