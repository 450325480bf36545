"""ipywidgets for lmjupyter: :class:`ControlPanel` (``%lmserve panel``).

Imported lazily so that ``lmjupyter.widgets.render`` (used by the magics in
terminals too) needs no ipywidgets.
"""

__all__ = ["ControlPanel"]


def __getattr__(name):
    if name == "ControlPanel":
        from lmjupyter.widgets.panel import ControlPanel

        return ControlPanel
    raise AttributeError(name)
