"""A small SVG line chart for the panel: no plotting library needed."""
from __future__ import annotations

import html
import math

COLORS = ("#0969da", "#bf8700", "#cf222e", "#1a7f37", "#8250df")


def line_chart(x: list[float], series: dict[str, list], title: str, unit: str = "",
               width: int = 360, height: int = 150) -> str:
    """Lines over x (None values break a line); y from 0 to the largest value."""
    left, right, top, bottom = 44, 8, 20, 22
    w, h = width - left - right, height - top - bottom
    values = [v for ys in series.values() for v in ys if v is not None]
    ymax = _nice(max(values) if values else 1.0)
    xmin, xmax = (min(x), max(x)) if x else (0.0, 1.0)
    span = (xmax - xmin) or 1.0

    def px(xv, yv):
        return left + w * (xv - xmin) / span, top + h * (1 - yv / ymax)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'class="lmj-chart" style="font:10px sans-serif">',
             f'<text x="{left}" y="12" font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#d0d7de"/>',
             f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{_fmt(ymax)}{html.escape(unit)}</text>',
             f'<text x="{left - 4}" y="{top + h}" text-anchor="end">0</text>',
             f'<text x="{left}" y="{height - 6}">{_fmt(xmin)}s</text>',
             f'<text x="{left + w}" y="{height - 6}" text-anchor="end">now</text>']
    for i, (label, ys) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        for run in _runs(x, ys):
            points = " ".join(f"{a:.1f},{b:.1f}" for a, b in (px(xv, yv) for xv, yv in run))
            if len(run) == 1:
                cx, cy = px(*run[0])
                parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2" fill="{color}"/>')
            else:
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>')
        parts.append(f'<text x="{left + 6 + 52 * i}" y="{top + 12}" fill="{color}">{html.escape(label)}</text>')
    if not values:
        parts.append(f'<text x="{left + w / 2}" y="{top + h / 2}" text-anchor="middle" fill="#6e7781">'
                     "no requests yet</text>")
    parts.append("</svg>")
    return "".join(parts)


def _runs(x, ys):
    run = []
    for xv, yv in zip(x, ys):
        if yv is None:
            if run:
                yield run
            run = []
        else:
            run.append((xv, yv))
    if run:
        yield run


def _nice(value: float) -> float:
    """The next 1, 2 or 5 times a power of ten at or above value."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"
