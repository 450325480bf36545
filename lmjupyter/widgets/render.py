"""Text and HTML views of the REST descriptions, shared by ``%lmserve`` and the panel.

Pure Python (no ipywidgets): a :class:`Table` shows as HTML in a notebook and as
aligned text in a terminal, because IPython picks from its mimebundle.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

STATE_COLORS = {"ready": "#1a7f37", "busy": "#0969da", "starting": "#9a6700", "loading": "#9a6700",
                "restarting": "#bc4c00", "failed": "#cf222e", "stopping": "#6e7781", "stopped": "#6e7781"}
STYLE = ("<style>.lmj-table{border-collapse:collapse;font-size:12px;margin:2px 0}"
         ".lmj-table th,.lmj-table td{border:1px solid #d0d7de;padding:2px 8px;text-align:left}"
         ".lmj-table th{background:#f6f8fa}.lmj-title{font-weight:600;margin:4px 0 2px}</style>")


class Table:
    """Rows of cells; a cell is plain text, or ``(text, state)`` to colour it by state."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "",
                 css_class: str = "", empty: str = "(none)", footer: str = ""):
        self.columns, self.rows, self.title = list(columns), [list(r) for r in rows], title
        self.css_class, self.empty, self.footer = css_class, empty, footer

    def text(self) -> str:
        cells = [self.columns] + [[_plain(c) for c in row] for row in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.title] if self.title else []
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells[0], widths)).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells[1:]]
        if not self.rows:
            lines.append(self.empty)
        if self.footer:
            lines.append(self.footer)
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(_cell_html(c) for c in row) + "</tr>" for row in self.rows)
        if not self.rows:
            body = f'<tr><td colspan="{len(self.columns)}"><i>{html.escape(self.empty)}</i></td></tr>'
        title = f'<div class="lmj-title">{html.escape(self.title)}</div>' if self.title else ""
        footer = f"<div>{html.escape(self.footer)}</div>" if self.footer else ""
        return (f'{STYLE}<div class="lmj {self.css_class}">{title}<table class="lmj-table">'
                f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{footer}</div>")

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": self.text(), "text/html": self.html()}

    def __str__(self) -> str:
        return self.text()


class Bundle:
    """Several views shown as one output (text joined by blank lines, HTML stacked)."""

    def __init__(self, *parts):
        self.parts = [p for p in parts if p is not None]

    def _repr_mimebundle_(self, include=None, exclude=None):
        texts = [p.text() if hasattr(p, "text") else str(p) for p in self.parts]
        htmls = [p.html() if hasattr(p, "html") else f"<pre>{html.escape(str(p))}</pre>" for p in self.parts]
        return {"text/plain": "\n\n".join(texts), "text/html": "".join(htmls)}


def _plain(cell) -> str:
    return str(cell[0]) if isinstance(cell, tuple) else ("" if cell is None else str(cell))


def _cell_html(cell) -> str:
    if isinstance(cell, tuple):
        text, state = cell
        color = STATE_COLORS.get(str(state), "inherit")
        return (f'<td data-state="{html.escape(str(state))}"><span style="color:{color};font-weight:600">'
                f"{html.escape(str(text))}</span></td>")
    return f"<td>{html.escape(_plain(cell))}</td>"


# ---- views of descriptions ------------------------------------------------------------------
def ranks_ready(model: dict) -> tuple[int, int]:
    """(ranks ready, ranks expected) of a model description."""
    torchrun = model.get("config", {}).get("torchrun", {})
    nproc = int(torchrun.get("nproc-per-node", 1)) * int(torchrun.get("nnodes", 1))
    target = int(model.get("target_workers", len(model.get("workers", []))))
    ready = sum(1 for w in model.get("workers", []) for r in w.get("ranks", []) if r.get("state") == "ready")
    return ready, max(target, len(model.get("workers", []))) * nproc


def models_table(models: list[dict], css_class: str = "lmj-models") -> Table:
    rows = []
    for m in models:
        workers = m.get("workers", [])
        healthy = sum(1 for w in workers if w.get("state") in ("ready", "busy"))
        ready, expected = ranks_ready(m)
        queue = m.get("queue", {})
        metrics = m.get("metrics", {})
        rows.append([m["name"], m.get("version", ""), (m["state"], m["state"]),
                     f"{healthy}/{m.get('target_workers', len(workers))}", f"{ready}/{expected}",
                     f"{queue.get('depth', 0)}/{queue.get('capacity', '?')}",
                     metrics.get("requests_total", 0), metrics.get("errors_total", 0)])
    return Table(["model", "version", "state", "workers", "ranks ready", "queue", "requests", "errors"],
                 rows, css_class=css_class, empty="no models deployed")


def rank_device(model: dict, worker: dict, rank: int) -> str:
    """Where a rank runs: 'cpu', or the physical GPU (CUDA_VISIBLE_DEVICES[local rank])."""
    devices = [d for d in str(worker.get("devices", "")).split(",") if d]
    if model.get("config", {}).get("deviceType") != "gpu" or not devices:
        return "cpu"
    return f"GPU {devices[rank % len(devices)]}"


def workers_table(model: dict, css_class: str = "lmj-workers") -> Table:
    """One row per rank; groups across hosts (torchrun.nnodes > 1) add the node each rank runs on."""
    workers = model.get("workers", [])
    several_hosts = any("nodes" in w for w in workers)
    rows, waiting = [], []
    for w in workers:
        ranks = w.get("ranks") or [{}]
        for r in ranks:
            rank = r.get("rank")
            device = r.get("device") or ("" if rank is None else rank_device(model, w, rank))
            row = [w["id"], (w["state"], w["state"]), w.get("devices") or "cpu",
                   "" if rank is None else rank, r.get("pid", ""),
                   (rank_state_text(r), r["state"]) if r.get("state") else "", device]
            if several_hosts:
                row.insert(3, f"{r['node']} ({r.get('address', '')})" if r.get("node") else "")
            rows.append(row)
        if w.get("waiting_for_nodes"):
            waiting.append(f"worker {w['id']} waits for nodes: {w['waiting_for_nodes']}")
    config = model.get("config", {})
    torchrun = config.get("torchrun", {})
    nproc = torchrun.get("nproc-per-node", 1)
    hosts = f" on {torchrun['nnodes']} hosts" if int(torchrun.get("nnodes", 1)) > 1 else ""
    title = (f"{model['name']} v{model.get('version', '?')}: {model['state']}, "
             f"{len(workers)} worker(s) x {nproc} rank(s){hosts} on {config.get('deviceType', '?')}")
    error = (model.get("error") or {}).get("message", "")
    footer = "; ".join(filter(None, [f"handler: {model.get('handler', '')}", error and f"error: {error}"]
                              + waiting + list(model.get("warnings") or [])))
    columns = ["worker", "state", "CUDA_VISIBLE_DEVICES", "rank", "pid", "rank state", "device"]
    if several_hosts:
        columns.insert(3, "node")
    return Table(columns, rows, title=title, css_class=css_class, empty="no workers running", footer=footer)


def nodes_table(nodes: list[dict], css_class: str = "lmj-nodes") -> Table:
    """This server's host and the ``lmjupyter node`` agents: state, GPUs (free of all), worker groups."""
    rows = []
    for n in nodes:
        gpus = n.get("gpus") or []
        free = sum(1 for g in gpus if not g.get("holder"))
        workers = ", ".join(f"{w['model']} w{w['worker']}" + (f" (node {w['node_rank']})" if w.get("node_rank") else "")
                            for w in n.get("workers") or [])
        state = n.get("state", "?")
        seen = n.get("last_seen_s")
        rows.append([n["name"] + (" (this server)" if n.get("local") else ""), n.get("hostname", ""),
                     n.get("address", ""), (state, "ready" if state == "online" else "failed"),
                     f"{free}/{len(gpus)} free" if gpus else "none", workers or "-",
                     "" if seen is None else f"{seen:g}s ago", n.get("lost_reason") or ""])
    return Table(["node", "host", "address", "state", "GPUs", "workers", "heartbeat", "lost because"], rows,
                 title="nodes", css_class=css_class, empty="no nodes")


def phase_text(phase: dict | None) -> str:
    """A start-up phase as people read it: "loading weights 3/22", "initializing"."""
    if not phase:
        return ""
    done, total = phase.get("done"), phase.get("total")
    count = f" {done}/{total}" if done is not None and total is not None else (f" {done}" if done is not None else "")
    return f"{phase.get('name', '')}{count}"


def rank_state_text(rank: dict) -> str:
    """A rank's state, with the phase it is in while it starts: "loading: loading weights 3/22"."""
    phase = phase_text(rank.get("phase"))
    return f"{rank['state']}: {phase}" if phase and rank.get("state") != "ready" else rank["state"]


def timeline(events: list[dict]) -> list[tuple[str, list[tuple[str, float]]]]:
    """Start-up events as one line per worker and rank, phases in the order they came, each with
    the time it was reached; repeats of a phase (loading weights 1/22, 2/22...) keep the latest count."""
    lines: dict[str, list[tuple[str, float]]] = {}
    phases: dict[str, list[str]] = {}
    for event in sorted(events, key=lambda e: e["seq"]):
        who = f"w{event['worker']}" + ("" if event.get("rank") is None else f"/r{event['rank']}")
        steps, names = lines.setdefault(who, []), phases.setdefault(who, [])
        text = phase_text({"name": event["phase"], "done": event.get("done"), "total": event.get("total")})
        if event.get("message"):
            text += f" ({event['message']})"
        if names and names[-1] == event["phase"]:
            steps[-1] = (text, event["t"])
        else:
            steps.append((text, event["t"]))
            names.append(event["phase"])
    return list(lines.items())


def timeline_text(events: list[dict]) -> str:
    return "\n".join(f"  {who}: " + " -> ".join(f"{text} ({t:.2f}s)" for text, t in steps)
                     for who, steps in timeline(events))


def plan_table(plan: dict) -> Table:
    """A dry run's plan: one row per worker, or per node of each worker when a group spans hosts."""
    p = plan["plan"]
    several_hosts = int(p.get("nnodes", 1)) > 1
    rows = []
    for w in p["workers"]:
        for part in w.get("nodes") or [w]:
            row = [w["id"], part["devices"] or "cpu", " ".join(part["command"]),
                   " ".join(f"{k}={v}" for k, v in part.get("env", {}).items())]
            if several_hosts:
                row.insert(1, f"{part['node_rank']}: {part['node']} ({part['address']})")
            rows.append(row)
    hosts = f" x {p['nnodes']} hosts" if several_hosts else ""
    title = (f"dry run of {plan['name']}: {len(p['workers'])} worker(s) x {p['nproc_per_node']} rank(s){hosts} "
             f"on {p['device_type']}, handler {plan['handler']}")
    columns = ["worker", "devices", "command", "environment"]
    if several_hosts:
        columns.insert(1, "node")
    return Table(columns, rows, title=title, css_class="lmj-plan", footer="; ".join(plan.get("warnings") or []))


def logs_text(logs: list[dict]) -> str:
    parts = []
    for entry in logs:
        parts.append(f"--- worker {entry['worker']} rank {entry['rank']} ---")
        parts.extend(entry.get("lines") or ["(empty)"])
    return "\n".join(parts) if parts else "(no logs)"
