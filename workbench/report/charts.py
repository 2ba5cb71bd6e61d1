"""Chart style and safe chart text shared by the report's figures (:mod:`figures`).

Plotly renders trace names, titles, tick and hover texts through its own small HTML-like markup
(``<b>``, ``<br>``, ``<a href>``). :func:`plot_text` escapes ``&``, ``<`` and ``>`` so that a
string from a user, a prompt or a tokenizer is shown literally instead of interpreted; every such
string must pass through it. The rest are layout helpers (system fonts, light grid, integer
axes) and a moving average for noisy curves.
"""

from __future__ import annotations

import html
import math
from typing import Any

from workbench.report.text import token_text

FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563",
           "#65a30d", "#9333ea"]  # fmt: skip
PATTERN_SCALE = [[0.0, "#ffffff"], [0.1, "#dbeafe"], [0.4, "#60a5fa"], [1.0, "#1e3a8a"]]
Figure = dict[str, Any]


def plot_text(value: Any, limit: int | None = None) -> str:
    """``value`` as a string Plotly shows literally (markup escaped; control characters made
    visible and inert, a string of spaces as ``␣``), cut to ``limit`` characters with an ellipsis."""
    text = token_text(str(value))
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return html.escape(text, quote=False)


def base_layout(title: str, x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    """The house layout (white, light grid, system font, legend below); ``extra`` keys are
    merged into it (dicts one level deep). ``title`` and the axis titles are not escaped."""
    axis = {"gridcolor": "#e5e7eb", "zerolinecolor": "#d1d5db", "linecolor": "#9ca3af", "automargin": True}
    layout: dict[str, Any] = {
        "title": {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        "font": {"family": FONT, "size": 12, "color": "#1f2937"},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "margin": {"l": 60, "r": 20, "t": 48, "b": 48},
        "height": 360,
        "xaxis": {**axis, "title": {"text": x_title}},
        "yaxis": {**axis, "title": {"text": y_title}},
        "legend": {"orientation": "h", "y": -0.22, "x": 0},
        "hoverlabel": {"font": {"family": FONT}},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(layout.get(key), dict):
            layout[key] = {**layout[key], **value}
        else:
            layout[key] = value
    return layout


def index_axis(count: int) -> dict[str, Any]:
    """An axis of layer/head/expert numbers: every one labelled when they fit, else plotly picks
    integer steps."""
    axis: dict[str, Any] = {"tickangle": 0, "tickformat": "d", "range": [-0.5, count - 0.5]}
    if count <= 16:
        axis["dtick"] = 1
    return axis


def make_figure(data: list[dict[str, Any]], layout: dict[str, Any]) -> Figure:
    """A figure as ``Plotly.newPlot`` takes it."""
    return {"data": data, "layout": layout}


def token_ticks(labels: list[str], limit: int = 14, max_ticks: int = 64) -> dict[str, Any]:
    """Tick values and escaped token texts for a numeric axis (every k-th when there are many)."""
    step = max(1, math.ceil(len(labels) / max_ticks))
    values = list(range(0, len(labels), step))
    return {
        "tickmode": "array",
        "tickvals": values,
        "ticktext": [plot_text(labels[i], limit) for i in values],
    }


def line_trace(x: list[Any], y: list[Any], name: str, color: str, **extra: Any) -> dict[str, Any]:
    """A line-and-markers scatter trace; ``name`` is escaped."""
    return {"type": "scatter", "mode": "lines+markers", "x": x, "y": y, "name": plot_text(name),
            "line": {"color": color, "width": 2}, "marker": {"size": 5}, **extra}  # fmt: skip


def moving_average(values: list[float | None], window: int) -> list[float | None]:
    """Centred moving average over ``window`` points, skipping nulls (null where all are)."""
    half = window // 2
    out: list[float | None] = []
    for index in range(len(values)):
        around = [v for v in values[max(0, index - half) : index + half + 1] if v is not None]
        out.append(round(sum(around) / len(around), 4) if around else None)
    return out
