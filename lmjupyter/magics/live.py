"""Output that changes in place: the deploy progress bar, streamed partial results."""
from __future__ import annotations

import html
import json

from IPython import get_ipython
from IPython.display import display

from lmjupyter.widgets.render import STATE_COLORS, ranks_ready


def in_kernel() -> bool:
    """True in a Jupyter kernel (outputs can be updated); False in terminal IPython."""
    return getattr(get_ipython(), "kernel", None) is not None


class Live:
    """One output updated in place in a notebook; printed again on change in a terminal."""

    def __init__(self):
        self.handle = None
        self.last_text = None

    def update(self, view) -> None:
        text = view._repr_mimebundle_()["text/plain"]
        if in_kernel():
            if self.handle is None:
                self.handle = display(view, display_id=True)
            elif text != self.last_text:
                self.handle.update(view)
            self.last_text = text
            return
        key = view.key() if hasattr(view, "key") else text  # a terminal reprints only real changes
        if key != self.last_text:
            print(text, flush=True)
        self.last_text = key


class DeployProgress:
    """A progress bar over every rank of every worker, with each rank's state."""

    def __init__(self, description: dict, elapsed: float):
        self.d, self.elapsed = description, elapsed

    def _ranks(self) -> list[tuple[str, str]]:
        out = []
        for w in self.d.get("workers", []):
            if not w.get("ranks"):
                out.append((f"w{w['id']}", w.get("state", "starting")))
            for r in w.get("ranks", []):
                out.append((f"w{w['id']}/r{r['rank']}", r.get("state", "?")))
        return out

    def key(self) -> str:
        return f"{self.d['state']} {self._ranks()}"

    def _repr_mimebundle_(self, include=None, exclude=None):
        ready, expected = ranks_ready(self.d)
        state = self.d["state"]
        width = 30
        filled = int(width * ready / expected) if expected else width
        ranks = self._ranks()
        text = (f"{self.d['name']}: {state} [{'#' * filled}{'.' * (width - filled)}] "
                f"{ready}/{expected} ranks ready ({self.elapsed:.0f}s)")
        if ranks and state != "ready":
            text += "  " + " ".join(f"{k}:{v}" for k, v in ranks)
        color = STATE_COLORS.get(state, "inherit")
        chips = "".join(f'<span style="margin-right:6px;color:{STATE_COLORS.get(v, "inherit")}">'
                        f"{html.escape(k)}: {html.escape(v)}</span>" for k, v in ranks)
        markup = (f'<div class="lmj-progress" data-state="{html.escape(state)}">'
                  f'<b>{html.escape(self.d["name"])}</b>: <span style="color:{color}">{html.escape(state)}</span> '
                  f'<progress max="{max(expected, 1)}" value="{ready}" style="width:220px"></progress> '
                  f"{ready}/{expected} ranks ready ({self.elapsed:.0f}s)<br><small>{chips}</small></div>")
        return {"text/plain": text, "text/html": markup}


def deploy_progress(description: dict, elapsed: float) -> DeployProgress:
    return DeployProgress(description, elapsed)


def print_partial(partial) -> bool:
    """Print one streamed partial result; True when the line was left open (token text)."""
    if partial is None:
        return False
    if isinstance(partial, dict) and isinstance(partial.get("text"), str):
        partial = partial["text"]  # the built-in causal-LM handler streams {"token_id", "text"}
    if isinstance(partial, str):
        print(partial, end="", flush=True)
        return True
    print(json.dumps(partial), flush=True)
    return False
