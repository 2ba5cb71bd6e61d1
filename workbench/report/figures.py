"""Plotly figures of the report's sections, as plain ``{"data", "layout"}`` dicts.

The HTML page hands each dict to ``Plotly.newPlot`` unchanged, so everything a chart shows is
decided here (and testable without a browser). Plotly renders trace names, titles, tick and
hover texts through its own small HTML-like markup (``<b>``, ``<br>``, ``<a href>``); every
string that may come from a user, a prompt or a tokenizer goes through :func:`plot_text`, which
escapes ``&``, ``<`` and ``>`` so that Plotly shows it literally instead of interpreting it.

Figure ids (the keys of the returned dicts) are fixed strings: they become DOM ids.
"""

from __future__ import annotations

import html
import math
from typing import Any

GIB = 2**30
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563",
           "#65a30d", "#9333ea"]  # fmt: skip
ATTENTION_STATS = {
    "entropy_norm": "Normalised entropy (1 = uniform, 0 = one key)",
    "max_prob": "Largest attention weight",
    "sink_mass": "Sink mass (weight on the first token)",
}
PATTERN_SCALE = [[0.0, "#ffffff"], [0.1, "#dbeafe"], [0.4, "#60a5fa"], [1.0, "#1e3a8a"]]
TIMING_COMPONENTS = {"attn": "attention", "mlp": "MLP / experts", "router": "router", "other": "other"}
Figure = dict[str, Any]


def plot_text(value: Any, limit: int | None = None) -> str:
    """``value`` as a string Plotly shows literally (markup escaped; newlines and tabs made
    visible), cut to ``limit`` characters with an ellipsis."""
    text = str(value).replace("\r", "\\r").replace("\n", "\u21b5").replace("\t", "\u2192")
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return html.escape(text, quote=False)


def _layout(title: str, x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
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


def _index_axis(count: int) -> dict[str, Any]:
    """An axis of layer/head/expert numbers: every one labelled when they fit, else plotly picks
    integer steps."""
    axis: dict[str, Any] = {"tickangle": 0, "tickformat": "d", "range": [-0.5, count - 0.5]}
    if count <= 16:
        axis["dtick"] = 1
    return axis


def _figure(data: list[dict[str, Any]], layout: dict[str, Any]) -> Figure:
    return {"data": data, "layout": layout}


def _ticks(labels: list[str], limit: int = 14, max_ticks: int = 64) -> dict[str, Any]:
    """Tick values and escaped token texts for a numeric axis (every k-th when there are many)."""
    step = max(1, math.ceil(len(labels) / max_ticks))
    values = list(range(0, len(labels), step))
    return {"tickmode": "array", "tickvals": values, "ticktext": [plot_text(labels[i], limit) for i in values]}


# --- attention ---------------------------------------------------------------------------------


def attention_figures(attention: dict[str, Any]) -> dict[str, Figure]:
    """Layer x head heatmaps of the per-head means (one per stat in :data:`ATTENTION_STATS`)."""
    figures = {}
    layers, heads = attention["n_layers"], attention["n_heads"]
    for stat, title in ATTENTION_STATS.items():
        values = attention["head_means"].get(stat)
        if values is None:
            continue
        heatmap = {
            "type": "heatmap", "z": values, "x": list(range(heads)), "y": list(range(layers)),
            "zmin": 0, "zmax": 1, "colorscale": "Viridis", "xgap": 1, "ygap": 1,
            "hovertemplate": "layer %{y}, head %{x}<br>" + stat + " %{z:.3f}<extra></extra>",
            "colorbar": {"thickness": 12},
        }  # fmt: skip
        layout = _layout(title, "head", "layer", height=max(300, min(640, 80 + 14 * layers)))
        layout["yaxis"].update(_index_axis(layers), range=[layers - 0.5, -0.5])
        layout["xaxis"].update(_index_axis(heads))
        figures[f"fig-attention-{stat}"] = _figure([heatmap], layout)
    return figures


def pattern_figures(attention: dict[str, Any]) -> list[Figure]:
    """One heatmap per captured pattern: query rows x keys, token labels on both axes."""
    labels = [str(label) for label in attention.get("token_labels") or []]
    figures = []
    for captured in attention.get("patterns") or []:
        rows = captured["pattern"]
        start = captured["start"]
        n_keys = max((len(row) for row in rows), default=0)
        keys = list(range(n_keys))
        queries = list(range(start, start + len(rows)))
        key_labels = [labels[k] if k < len(labels) else str(k) for k in keys]
        query_labels = [labels[q] if q < len(labels) else str(q) for q in queries]
        heatmap = {
            "type": "heatmap", "z": rows, "x": keys, "y": queries, "zmin": 0, "zmax": 1,
            "colorscale": PATTERN_SCALE, "colorbar": {"thickness": 12, "title": {"text": "weight"}},
            "hovertemplate": "query %{y} \u2192 key %{x}<br>weight %{z:.3f}<extra></extra>",
        }  # fmt: skip
        title = f"Layer {captured['layer']}, head {captured['head']}: queries {start}\u2013{start + len(rows) - 1}"
        side = max(420, min(900, 140 + 11 * max(len(rows), n_keys)))
        layout = _layout(title, "key (attended token)", "query token", height=side)
        layout["margin"] = {"l": 110, "r": 20, "t": 48, "b": 110}
        layout["xaxis"].update(_ticks(key_labels), tickangle=-60, tickfont={"size": 10}, constrain="domain",
                               scaleanchor="y")
        layout["yaxis"].update(_ticks(query_labels), autorange="reversed", tickfont={"size": 10})
        figures.append(_figure([heatmap], layout))
    return figures


# --- residual ----------------------------------------------------------------------------------


def _line(x: list[Any], y: list[Any], name: str, color: str, **extra: Any) -> dict[str, Any]:
    return {"type": "scatter", "mode": "lines+markers", "x": x, "y": y, "name": plot_text(name),
            "line": {"color": color, "width": 2}, "marker": {"size": 5}, **extra}  # fmt: skip


def residual_figures(residual: dict[str, Any]) -> dict[str, Figure]:
    """Write ratio per layer (attention, MLP) and the logit lens (KL and top-1 agreement)."""
    figures = {}
    means = residual.get("layer_means") or {}
    lines = []
    for index, (stat, name) in enumerate((("attn_ratio", "attention |write| / |stream|"),
                                          ("mlp_ratio", "MLP |write| / |stream|"))):  # fmt: skip
        if stat in means:
            layers = list(range(len(means[stat])))
            lines.append(_line(layers, means[stat], name, PALETTE[index],
                               hovertemplate="layer %{x}: %{y:.3f}<extra>" + stat + "</extra>"))
    if lines:
        layout = _layout("Write ratio per layer", "layer", "|write| / |residual|")
        layout["xaxis"].update(_index_axis(len(means.get("attn_ratio") or means.get("mlp_ratio"))))
        figures["fig-residual-writes"] = _figure(lines, layout)
    lens = residual.get("lens")
    if lens:
        layers = list(range(len(lens["kl_mean"])))
        kl = _line(layers, lens["kl_mean"], "KL(final \u2016 layer), nats", PALETTE[4],
                   hovertemplate="layer %{x}: KL %{y:.3f} nats<extra></extra>")
        top1 = _line(layers, lens["top1_mean"], "top-1 agrees with final", PALETTE[2], yaxis="y2",
                     hovertemplate="layer %{x}: %{y:.1%}<extra></extra>")
        top1["line"]["dash"] = "dot"
        layout = _layout("Logit lens", "layer", "KL, nats")
        layout["xaxis"].update(_index_axis(len(layers)))
        layout["yaxis2"] = {"title": {"text": "top-1 agreement"}, "overlaying": "y", "side": "right",
                            "range": [0, 1.02], "tickformat": ".0%", "showgrid": False}  # fmt: skip
        layout["margin"]["r"] = 60
        figures["fig-residual-lens"] = _figure([kl, top1], layout)
    return figures


# --- routing -----------------------------------------------------------------------------------


def routing_summary(layer: dict[str, Any]) -> dict[str, Any]:
    """Derived numbers of one MoE layer: load shares, dead experts, busiest expert vs uniform."""
    load = layer["load"]
    total = sum(load)
    shares = [count / total if total else 0.0 for count in load]
    uniform = 1 / layer["n_experts"]
    return {
        "shares": shares,
        "dead": [expert for expert, count in enumerate(load) if count == 0],
        "max_share_over_uniform": (max(shares) / uniform) if total else None,
    }


def routing_figures(routing: dict[str, Any]) -> dict[str, Figure]:
    """Load share and router importance per expert and layer; dead experts crossed out."""
    layers = routing.get("layers") or []
    if not layers:
        return {}
    n_experts = max(layer["n_experts"] for layer in layers)
    names = [layer["layer"] for layer in layers]
    y = list(range(len(layers)))  # rows in order; ticks name the real layer numbers
    shares, importance, dead_x, dead_y = [], [], [], []
    for row, layer in enumerate(layers):
        summary = routing_summary(layer)
        pad = [None] * (n_experts - layer["n_experts"])
        shares.append(summary["shares"] + pad)
        importance.append(list(layer["importance"]) + pad)
        dead_x.extend(summary["dead"])
        dead_y.extend([row] * len(summary["dead"]))
    height = max(260, min(700, 90 + 26 * len(layers)))
    ticks = {"tickmode": "array", "tickvals": y, "ticktext": [f"L{n}" for n in names], "autorange": "reversed"}
    figures = {}
    for key, z, title, label in (
        ("fig-routing-load", shares, "Load share per expert (dead experts crossed)", "share"),
        ("fig-routing-importance", importance, "Router importance (mean probability)", "importance"),
    ):
        data: list[dict[str, Any]] = [{
            "type": "heatmap", "z": z, "x": list(range(n_experts)), "y": y, "zmin": 0,
            "colorscale": "Viridis", "xgap": 1, "ygap": 1, "colorbar": {"thickness": 12},
            "hovertemplate": "expert %{x}<br>" + label + " %{z:.3f}<extra></extra>",
        }]  # fmt: skip
        if dead_x:
            data.append({
                "type": "scatter", "mode": "markers", "x": dead_x, "y": dead_y, "name": "dead expert",
                "marker": {"symbol": "x-thin-open", "size": 16, "line": {"width": 3, "color": "#dc2626"}},
                "hovertemplate": "expert %{x}: no tokens routed<extra>dead</extra>",
            })  # fmt: skip
        layout = _layout(title, "expert", "MoE layer", height=height)
        layout["yaxis"].update(ticks)
        layout["xaxis"].update(_index_axis(n_experts))
        layout["showlegend"] = False
        figures[key] = _figure(data, layout)
    return figures


# --- length ------------------------------------------------------------------------------------


def length_figures(length: dict[str, Any]) -> dict[str, Figure]:
    """Loss against position, one line per probe length, the trained context marked."""
    lines = []
    for index, probe in enumerate(length.get("probes") or []):
        losses = probe.get("loss_by_position") or []
        if probe.get("error") or not losses:
            continue
        size = probe["bucket_size"]
        x = [i * size + (size - 1) / 2 for i in range(len(losses))]
        name = f"{probe['kind']} \u00b7 {probe['length']:,} tokens"
        line = _line(x, losses, name, PALETTE[index % len(PALETTE)],
                     hovertemplate="position %{x:,.0f}: %{y:.3f} nats<extra>" + plot_text(name) + "</extra>")
        line["mode"] = "lines"
        if probe["kind"] == "repeated":
            line["line"]["dash"] = "dash"
        lines.append(line)
    if not lines:
        return {}
    trained = length["trained_context"]
    layout = _layout("Loss by position", "token position", "next-token loss, nats", height=400)
    layout["shapes"] = [{"type": "line", "x0": trained, "x1": trained, "yref": "paper", "y0": 0, "y1": 1,
                         "line": {"color": "#111827", "width": 1.5, "dash": "dot"}}]  # fmt: skip
    layout["annotations"] = [{"x": trained, "yref": "paper", "y": 1, "text": f"trained context {trained:,}",
                              "showarrow": False, "xanchor": "left", "yanchor": "bottom",
                              "font": {"size": 11}}]  # fmt: skip
    return {"fig-length-loss": _figure(lines, layout)}


# --- KV cache ----------------------------------------------------------------------------------


def kv_figures(kv: dict[str, Any]) -> dict[str, Figure]:
    """Memory needed against context, split into weights and the rest (KV cache and workspace);
    each device's usable memory as a dashed line with a dot where the model stops fitting; the
    deployment point (the plan's device, batch and context) as a star.

    The need is the same on every device unless a device changes the shape, so identical curves
    are drawn once."""
    devices = kv.get("devices") or []
    contexts = [point["context"] for device in devices for point in device["curve"]]
    if not contexts:
        return {}
    low, high = min(contexts), max(contexts)
    curves: dict[str, list[dict[str, Any]]] = {}
    names: dict[str, list[str]] = {}
    for device in devices:
        key = repr([(p["context"], p["total_bytes"]) for p in device["curve"]])
        curves.setdefault(key, device["curve"])
        names.setdefault(key, []).append(device["name"])
    data: list[dict[str, Any]] = []
    for index, (key, curve) in enumerate(curves.items()):
        label = "memory needed" if len(curves) == 1 else f"needed on {', '.join(names[key])}"
        x = [p["context"] for p in curve]
        if index == 0:
            data.append({
                "type": "scatter", "mode": "lines", "name": "weights", "x": x,
                "y": [p["weights_bytes"] / GIB for p in curve], "fill": "tozeroy",
                "fillcolor": "rgba(148, 163, 184, 0.35)", "line": {"color": "#94a3b8", "width": 1},
                "hovertemplate": "weights %{y:.2f} GiB<extra></extra>",
            })  # fmt: skip
        data.append({
            "type": "scatter", "mode": "lines", "name": plot_text(label), "x": x,
            "y": [p["total_bytes"] / GIB for p in curve], "fill": "tonexty" if index == 0 else "none",
            "fillcolor": "rgba(37, 99, 235, 0.12)", "line": {"color": "#111827", "width": 2.5},
            "customdata": [[p["kv_bytes"] / GIB] for p in curve],
            "hovertemplate": "%{x:,} tokens: %{y:.2f} GiB<br>KV cache %{customdata[0]:.2f} GiB"
                             "<extra>" + plot_text(label) + "</extra>",
        })  # fmt: skip
    for index, device in enumerate(devices):
        color = PALETTE[index % len(PALETTE)]
        name = plot_text(device["name"])
        usable = device["usable_bytes"] / GIB
        data.append({
            "type": "scatter", "mode": "lines", "name": f"{name}: {usable:,.1f} GiB usable",
            "legendgroup": name, "x": [low, high], "y": [usable, usable],
            "line": {"color": color, "width": 1.5, "dash": "dash"},
            "hovertemplate": "usable %{y:.1f} GiB<extra>" + name + "</extra>",
        })  # fmt: skip
        limit = device.get("max_context")
        if limit and low <= limit <= high:
            data.append({
                "type": "scatter", "mode": "markers", "name": f"{name} limit", "legendgroup": name,
                "showlegend": False, "x": [limit], "y": [usable],
                "marker": {"color": color, "size": 9, "line": {"color": "#ffffff", "width": 1}},
                "hovertemplate": "largest context that fits: %{x:,} tokens<extra>" + name + "</extra>",
            })  # fmt: skip
    plan = kv["plan"]
    deployment = f"deployment: batch {plan['batch']}, {plan['context']:,} tokens on {plan['device']}"
    data.append({
        "type": "scatter", "mode": "markers", "name": plot_text(deployment),
        "x": [plan["context"]], "y": [plan["total_bytes"] / GIB],
        "marker": {"symbol": "star", "size": 17, "color": "#f59e0b", "line": {"color": "#111827", "width": 1}},
        "hovertemplate": "deployment: %{x:,} tokens, %{y:.2f} GiB<extra></extra>",
    })  # fmt: skip
    title = f"Memory per device vs context (batch {kv['batch']}, KV cache {plot_text(kv['kv_dtype'])})"
    layout = _layout(title, "context, tokens", "GiB per device", height=440)
    if high > 10 * low:
        layout["xaxis"]["type"] = "log"
    layout["yaxis"]["rangemode"] = "tozero"
    layout["legend"]["y"] = -0.2
    return {"fig-kv-memory": _figure(data, layout)}


# --- timing ------------------------------------------------------------------------------------


def component_us(row: dict[str, Any], name: str) -> float:
    """A per-layer component time in microseconds (``attn_us`` or ``attn``)."""
    value = row.get(f"{name}_us", row.get(name))
    return float(value) if value is not None else 0.0


def timing_figures(timing: dict[str, Any]) -> dict[str, Figure]:
    """Time per layer, stacked by component (profiled CPU time, microseconds)."""
    rows = (timing.get("components") or {}).get("per_layer") or []
    if not rows:
        return {}
    layers = [row["layer"] for row in rows]
    largest = max(sum(component_us(row, name) for name in TIMING_COMPONENTS) for row in rows)
    unit, divisor = ("ms", 1e3) if largest >= 1e4 else ("\u00b5s", 1.0)
    bars = []
    for index, (name, label) in enumerate(TIMING_COMPONENTS.items()):
        values = [component_us(row, name) / divisor for row in rows]
        if name == "router" and not any(values):
            continue
        bars.append({"type": "bar", "name": label, "x": layers, "y": values,
                     "marker": {"color": PALETTE[index]},
                     "hovertemplate": "layer %{x}: %{y:,.1f} " + unit + "<extra>" + label + "</extra>"})  # fmt: skip
    layout = _layout("Time per layer by component", "layer", f"{unit} per forward (profiled)", barmode="stack")
    layout["xaxis"].update(tickformat="d", dtick=1 if len(layers) <= 16 else None)
    layout["legend"]["traceorder"] = "normal"
    return {"fig-timing-layers": _figure(bars, layout)}


def all_figures(report: dict[str, Any]) -> dict[str, Figure]:
    """Every static figure of ``report``, keyed by its (fixed) DOM id."""
    builders = {
        "attention": attention_figures, "residual": residual_figures, "routing": routing_figures,
        "length": length_figures, "kv": kv_figures, "timing": timing_figures,
    }  # fmt: skip
    figures: dict[str, Figure] = {}
    for section, build in builders.items():
        if report.get(section):
            figures.update(build(report[section]))
    return figures
