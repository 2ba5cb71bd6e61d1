"""The attention pattern viewer's data: one frame per pattern shape, the weights per head.

A SmolLM2 report captures 270 patterns (30 layers x 9 heads) over the first 48 tokens. Built as
270 complete Plotly figures, each would repeat the same axes and token labels; here patterns of
one shape share a frame (layout, token labels, colour scale) and each head adds only its title
and weight rows, which the page (assets/report.js) joins into a figure when the head is shown.
"""

from __future__ import annotations

from typing import Any

from workbench.report.charts import PATTERN_SCALE, Figure, base_layout, make_figure, token_ticks


def pattern_views(attention: dict[str, Any]) -> dict[str, Any]:
    """The pattern viewer's data: ``frames``, figures without their weights (axes, token labels,
    colour scale; patterns of one shape share one), and ``heads``, per captured pattern its
    ``frame``, ``title`` and weight rows ``z``. Rows may stop at the diagonal (compact.py); the
    page pads them with nulls, which draw as blank cells. Keeping the labels and layout once per
    shape instead of once per head keeps the page small (270 heads for SmolLM2)."""
    frames: list[Figure] = []
    index: dict[tuple[int, int, int], int] = {}
    heads = []
    for captured in attention.get("patterns") or []:
        rows = captured["pattern"]
        start = captured["start"]
        n_keys = max((len(row) for row in rows), default=0)
        shape = (start, len(rows), n_keys)
        if shape not in index:
            index[shape] = len(frames)
            frames.append(_pattern_frame(attention, *shape))
        heads.append({
            "frame": index[shape], "z": rows,
            "title": f"Layer {captured['layer']}, head {captured['head']}: queries {start}\u2013{start + len(rows) - 1}",
        })  # fmt: skip
    return {"frames": frames, "heads": heads}


def _pattern_frame(attention: dict[str, Any], start: int, n_rows: int, n_keys: int) -> Figure:
    """A pattern heatmap of this shape with no weights: token labels on both axes."""
    labels = [str(label) for label in attention.get("token_labels") or []]
    keys = list(range(n_keys))
    queries = list(range(start, start + n_rows))
    key_labels = [labels[k] if k < len(labels) else str(k) for k in keys]
    query_labels = [labels[q] if q < len(labels) else str(q) for q in queries]
    heatmap = {
        "type": "heatmap", "z": [], "x": keys, "y": queries, "zmin": 0, "zmax": 1,
        "colorscale": PATTERN_SCALE, "colorbar": {"thickness": 12, "title": {"text": "weight"}},
        "hovertemplate": "query %{y} \u2192 key %{x}<br>weight %{z:.3f}<extra></extra>", "hoverongaps": False,
    }  # fmt: skip
    side = max(560, min(900, 200 + 18 * max(n_rows, n_keys)))
    layout = base_layout("", "key (attended token)", "query token", height=side)
    layout["margin"] = {"l": 110, "r": 20, "t": 48, "b": 110}
    layout["xaxis"].update(
        token_ticks(key_labels), tickangle=-60, tickfont={"size": 10}, constrain="domain", scaleanchor="y",
        showgrid=False,
    )
    layout["yaxis"].update(
        token_ticks(query_labels), autorange="reversed", tickfont={"size": 10}, constrain="domain", showgrid=False
    )
    return make_figure([heatmap], layout)


def pattern_figures(attention: dict[str, Any]) -> list[Figure]:
    """One complete heatmap per captured pattern (what the page draws from :func:`pattern_views`),
    rows padded to the frame's width with nulls."""
    views = pattern_views(attention)
    figures = []
    for head in views["heads"]:
        frame = views["frames"][head["frame"]]
        width = len(frame["data"][0]["x"])
        heatmap = {**frame["data"][0], "z": [row + [None] * (width - len(row)) for row in head["z"]]}
        layout = {**frame["layout"], "title": {**frame["layout"]["title"], "text": head["title"]}}
        figures.append(make_figure([heatmap], layout))
    return figures
