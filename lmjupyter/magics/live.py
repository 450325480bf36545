"""Output that changes in place: the deploy progress bar, streamed partial results."""
from __future__ import annotations

import html
import json

from IPython import get_ipython
from IPython.display import display

from lmjupyter.widgets.render import STATE_COLORS, phase_text, ranks_ready, timeline


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
    """A progress bar over every rank of every worker, with each rank's state and, below it, the
    start-up phases every rank went through (the server's events), in order, with their times."""

    def __init__(self, description: dict, elapsed: float, events: list[dict] | None = None):
        self.d, self.elapsed, self.events = description, elapsed, events or []

    def _ranks(self) -> list[tuple[str, str]]:
        out = []
        for w in self.d.get("workers", []):
            if not w.get("ranks"):
                out.append((f"w{w['id']}", w.get("state", "starting")))
            for r in w.get("ranks", []):
                phase = phase_text(r.get("phase"))
                out.append((f"w{w['id']}/r{r['rank']}", r.get("state", "?") + (f" ({phase})" if phase else "")))
        return out

    def key(self) -> str:
        return f"{self.d['state']} {self._ranks()} {timeline(self.events)}"

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
        steps = timeline(self.events)
        for who, phases in steps:
            text += f"\n  {who}: " + " -> ".join(f"{p} ({t:.2f}s)" for p, t in phases)
        color = STATE_COLORS.get(state, "inherit")
        chips = "".join(f'<span style="margin-right:6px;color:{STATE_COLORS.get(v.split(" ")[0], "inherit")}">'
                        f"{html.escape(k)}: {html.escape(v)}</span>" for k, v in ranks)
        rows = "".join(f'<div class="lmj-timeline"><code>{html.escape(who)}</code>: '
                       + " &rarr; ".join(f"{html.escape(p)} <small>({t:.2f}s)</small>" for p, t in phases)
                       + "</div>" for who, phases in steps)
        markup = (f'<div class="lmj-progress" data-state="{html.escape(state)}">'
                  f'<b>{html.escape(self.d["name"])}</b>: <span style="color:{color}">{html.escape(state)}</span> '
                  f'<progress max="{max(expected, 1)}" value="{ready}" style="width:220px"></progress> '
                  f"{ready}/{expected} ranks ready ({self.elapsed:.0f}s)<br><small>{chips}</small>"
                  f'<div style="font-size:11px">{rows}</div></div>')
        return {"text/plain": text, "text/html": markup}


def deploy_progress(description: dict, elapsed: float, events: list[dict] | None = None) -> DeployProgress:
    return DeployProgress(description, elapsed, events)


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
