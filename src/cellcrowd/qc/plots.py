"""Small inline SVG plots for the QC page: lines over time, a histogram, horizontal bars.

Each function returns one ``<svg>`` element as text (every label escaped), sized
in CSS pixels, with a ``<title>`` for screen readers; no script, no external files.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np

from .overlay import PALETTE

__all__ = ["bar_chart", "histogram", "line_plot"]

_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 24, 34
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _colour(i: int) -> str:
    r, g, b = (int(v) for v in PALETTE[i % len(PALETTE)])
    # Darkened: the palette is made to show on grey images, these lines sit on white.
    return f"rgb({r * 3 // 4},{g * 3 // 4},{b * 3 // 4})"


def _frame(svg_id: str, title: str, width: int, height: int, body: list[str],
           xlabel: str, ylabel: str) -> str:
    inner_h = height - _TOP - _BOTTOM
    return "\n".join([
        f'<svg id="{_e(svg_id)}" class="plot" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{_e(title)}</title>",
        f'<text x="{_LEFT}" y="14" {_FONT} font-weight="bold">{_e(title)}</text>',
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{height - _BOTTOM}" stroke="#444"/>',
        f'<line x1="{_LEFT}" y1="{height - _BOTTOM}" x2="{width - _RIGHT}" '
        f'y2="{height - _BOTTOM}" stroke="#444"/>',
        f'<text x="{(width + _LEFT) // 2}" y="{height - 4}" text-anchor="middle" {_FONT}>'
        f"{_e(xlabel)}</text>",
        f'<text x="12" y="{_TOP + inner_h // 2}" text-anchor="middle" {_FONT} '
        f'transform="rotate(-90 12 {_TOP + inner_h // 2})">{_e(ylabel)}</text>',
        *body, "</svg>"])


def _tick(x: float, y: float, text: str, anchor: str) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {_FONT}>{_e(text)}</text>'


def line_plot(series: Mapping[str, Sequence[tuple[float, float]]], *, svg_id: str, title: str,
              xlabel: str, ylabel: str, width: int = 720, height: int = 260) -> str:
    """One polyline per series of (x, y) points; a legend names the first 12 series."""
    points = [p for s in series.values() for p in s]
    if not points:
        return _frame(svg_id, title, width, height, [_tick(width / 2, height / 2, "no data",
                                                           "middle")], xlabel, ylabel)
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    x0, x1 = float(xs.min()), max(float(xs.max()), float(xs.min()) + 1)
    y1 = max(float(ys.max()), 1.0)
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def at(x: float, y: float) -> str:
        return f"{_LEFT + (x - x0) / (x1 - x0) * plot_w:.1f},{_TOP + (1 - y / y1) * plot_h:.1f}"

    body = [_tick(_LEFT - 4, _TOP + 4, f"{y1:g}", "end"),
            _tick(_LEFT - 4, height - _BOTTOM, "0", "end"),
            _tick(_LEFT, height - _BOTTOM + 14, f"{x0:g}", "middle"),
            _tick(width - _RIGHT, height - _BOTTOM + 14, f"{x1:g}", "middle")]
    for i, (name, pts) in enumerate(series.items()):
        path = " ".join(at(x, y) for x, y in sorted(pts))
        body.append(f'<polyline fill="none" stroke="{_colour(i)}" stroke-width="1.5" '
                    f'points="{path}"><title>{_e(name)}</title></polyline>')
        if i < 12:
            lx = width - _RIGHT - 90
            body.append(f'<text x="{lx}" y="{_TOP + 12 * i + 10}" fill="{_colour(i)}" '
                        f"{_FONT}>{_e(name)}</text>")
    if len(series) > 12:
        body.append(_tick(width - _RIGHT - 90, _TOP + 12 * 12 + 10,
                          f"and {len(series) - 12} more", "start"))
    return _frame(svg_id, title, width, height, body, xlabel, ylabel)


def histogram(values: Sequence[float], *, svg_id: str, title: str, xlabel: str,
              bins: int = 10, low: float = 0.0, high: float = 1.0, width: int = 360,
              height: int = 220) -> str:
    """Counts of ``values`` in ``bins`` equal bins from ``low`` to ``high`` (ends included)."""
    counts, edges = np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))
    top = max(int(counts.max()) if counts.size else 0, 1)
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    bar_w = plot_w / bins
    body = [_tick(_LEFT - 4, _TOP + 4, str(top), "end"),
            _tick(_LEFT - 4, height - _BOTTOM, "0", "end"),
            _tick(_LEFT, height - _BOTTOM + 14, f"{low:g}", "middle"),
            _tick(width - _RIGHT, height - _BOTTOM + 14, f"{high:g}", "middle")]
    for i, count in enumerate(counts):
        h = count / top * plot_h
        body.append(
            f'<rect class="bin" x="{_LEFT + i * bar_w + 1:.1f}" y="{_TOP + plot_h - h:.1f}" '
            f'width="{bar_w - 2:.1f}" height="{h:.1f}" fill="#3465a4"><title>'
            f"{edges[i]:.2f}–{edges[i + 1]:.2f}: {int(count)}</title></rect>")
    return _frame(svg_id, title, width, height, body, xlabel, "units")


def bar_chart(items: Sequence[tuple[str, float]], *, svg_id: str, title: str, xlabel: str,
              high: float = 1.0, width: int = 420) -> str:
    """One horizontal bar per (name, value), 0 to ``high``; every item is drawn."""
    row = 16
    height = _TOP + _BOTTOM + max(len(items), 1) * row
    left = 120
    plot_w = width - left - _RIGHT
    body = [_tick(left, height - _BOTTOM + 14, "0", "middle"),
            _tick(width - _RIGHT, height - _BOTTOM + 14, f"{high:g}", "middle")]
    for i, (name, value) in enumerate(items):
        y = _TOP + i * row
        w = max(0.0, min(value, high)) / high * plot_w
        body.append(_tick(left - 4, y + 12, name[:18], "end"))
        body.append(f'<rect class="bar" x="{left}" y="{y + 2}" width="{w:.1f}" '
                    f'height="{row - 4}" fill="#3465a4"><title>{_e(name)}: {value:.3f}'
                    "</title></rect>")
    svg = _frame(svg_id, title, width, height, body, xlabel, "")
    # The y axis of a bar chart starts at the names' right edge.
    return svg.replace(f'x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}"', f'x1="{left}" y1="{_TOP}" '
                       f'x2="{left}"', 1)
