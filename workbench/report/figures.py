"""Plotly figures of the report's sections, as plain ``{"data", "layout"}`` dicts.

The HTML page hands each dict to ``Plotly.newPlot`` unchanged, so everything a chart shows is
decided here (and testable without a browser). Every string that may come from a user, a prompt
or a tokenizer goes through :func:`charts.plot_text` before it reaches a chart.

Figure ids (the keys of the returned dicts) are fixed strings: they become DOM ids.
"""

from __future__ import annotations

from typing import Any

from workbench.report.charts import (
    PALETTE,
    Figure,
    base_layout,
    index_axis,
    line_trace,
    make_figure,
    moving_average,
    plot_text,
)
from workbench.units import GIB

ATTENTION_STATS = {
    "entropy_norm": "Normalised entropy (1 = uniform, 0 = one key)",
    "max_prob": "Largest attention weight",
    "sink_mass": "Sink mass (weight on the first token)",
}
TIMING_COMPONENTS = {"attn": "attention", "mlp": "MLP / experts", "router": "router", "other": "other"}


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
        layout = base_layout(title, "head", "layer", height=max(300, min(640, 80 + 14 * layers)))
        layout["yaxis"].update(index_axis(layers), range=[layers - 0.5, -0.5])
        layout["xaxis"].update(index_axis(heads))
        figures[f"fig-attention-{stat}"] = make_figure([heatmap], layout)
    return figures


# --- residual ----------------------------------------------------------------------------------


def residual_figures(residual: dict[str, Any]) -> dict[str, Figure]:
    """Write ratio per layer (attention, MLP) and the logit lens (KL and top-1 agreement)."""
    figures = {}
    means = residual.get("layer_means") or {}
    lines = []
    for index, (stat, name) in enumerate((("attn_ratio", "attention |write| / |stream|"),
                                          ("mlp_ratio", "MLP |write| / |stream|"))):  # fmt: skip
        if stat in means:
            layers = list(range(len(means[stat])))
            lines.append(
                line_trace(
                    layers,
                    means[stat],
                    name,
                    PALETTE[index],
                    hovertemplate="layer %{x}: %{y:.3f}<extra>" + stat + "</extra>",
                )
            )
    if lines:
        layout = base_layout("Write ratio per layer", "layer", "|write| / |residual|")
        values = [v for line in lines for v in line["y"] if v is not None and v > 0]
        if values and max(values) > 20 * min(values):
            layout["yaxis"]["type"] = "log"
            layout["title"]["text"] += " (log scale)"
        layout["xaxis"].update(index_axis(len(means.get("attn_ratio") or means.get("mlp_ratio"))))
        figures["fig-residual-writes"] = make_figure(lines, layout)
    lens = residual.get("lens")
    if lens:
        layers = list(range(len(lens["kl_mean"])))
        kl = line_trace(
            layers,
            lens["kl_mean"],
            "KL(final \u2016 layer), nats",
            PALETTE[4],
            hovertemplate="layer %{x}: KL %{y:.3f} nats<extra></extra>",
        )
        top1 = line_trace(
            layers,
            lens["top1_mean"],
            "top-1 agrees with final",
            PALETTE[2],
            yaxis="y2",
            hovertemplate="layer %{x}: %{y:.1%}<extra></extra>",
        )
        top1["line"]["dash"] = "dot"
        layout = base_layout("Logit lens", "layer", "KL, nats")
        layout["xaxis"].update(index_axis(len(layers)))
        layout["yaxis2"] = {"title": {"text": "top-1 agreement"}, "overlaying": "y", "side": "right",
                            "range": [0, 1.02], "tickformat": ".0%", "dtick": 0.25, "showgrid": False}  # fmt: skip
        layout["margin"]["r"] = 60
        figures["fig-residual-lens"] = make_figure([kl, top1], layout)
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
    ticks = {
        "tickmode": "array",
        "tickvals": y,
        "ticktext": [f"L{n}" for n in names],
        "autorange": "reversed",
    }
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
        layout = base_layout(title, "expert", "MoE layer", height=height)
        layout["yaxis"].update(ticks)
        layout["xaxis"].update(index_axis(n_experts))
        layout["showlegend"] = False
        figures[key] = make_figure(data, layout)
    return figures


# --- length ------------------------------------------------------------------------------------


def length_figures(length: dict[str, Any]) -> dict[str, Figure]:
    """Loss against position, one line per probe kind and length (a moving average over the raw
    curve, which is drawn faintly; probes read off a longer one's prefix are not drawn again),
    the trained context marked when the probes reach it."""
    lines = []
    longest = 0
    for index, probe in enumerate(length.get("probes") or []):
        losses = probe.get("loss_by_position") or []
        if probe.get("error") or not losses or probe.get("prefix_of"):
            continue
        size = probe["bucket_size"]
        x = [i * size + (size - 1) / 2 for i in range(len(losses))]
        longest = max(longest, probe["length"])
        name = f"{probe['kind']} \u00b7 {probe['length']:,} tokens"
        color = PALETTE[index % len(PALETTE)]
        window = len(losses) // 16
        hover = "position %{x:,.0f}: %{y:.3f} nats<extra>" + plot_text(name) + "</extra>"
        line = line_trace(x, losses, name, color, hovertemplate=hover)
        line["mode"] = "lines"
        if window >= 2:
            raw = {**line, "showlegend": False, "opacity": 0.25, "legendgroup": name, "hoverinfo": "skip"}
            raw["line"] = {"color": color, "width": 1}
            raw.pop("hovertemplate")
            lines.append(raw)
            line["y"] = moving_average(losses, window)
            line["legendgroup"] = name
            line["hovertemplate"] = hover.replace("nats<", f"nats (mean of {window * size:,} positions)<")
        if probe["kind"] == "copy":
            line["line"]["dash"] = "dash"
        lines.append(line)
    if not lines:
        return {}
    trained = length["trained_context"]
    title = "Loss by position"
    layout = base_layout(title, "token position", "next-token loss, nats", height=400)
    if trained <= 1.05 * longest:
        layout["shapes"] = [{"type": "line", "x0": trained, "x1": trained, "yref": "paper", "y0": 0, "y1": 1,
                             "line": {"color": "#111827", "width": 1.5, "dash": "dot"}}]  # fmt: skip
        layout["annotations"] = [{"x": trained, "yref": "paper", "y": 1, "text": f"trained context {trained:,}",
                                  "showarrow": False, "xanchor": "left", "yanchor": "bottom",
                                  "font": {"size": 11}}]  # fmt: skip
    else:
        layout["title"]["text"] = (
            f"{title} (the trained context, {trained:,} tokens, is beyond the longest probe)"
        )
    return {"fig-length-loss": make_figure(lines, layout)}


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
    if plan.get("engine_title"):
        title += f", as {plot_text(plan['engine_title'])} would serve it"
    layout = base_layout(title, "context, tokens", "GiB per device", height=440)
    if high > 10 * low:
        layout["xaxis"]["type"] = "log"
    needed = [p["total_bytes"] for curve in curves.values() for p in curve if p["total_bytes"] > 0]
    usable = [d["usable_bytes"] for d in devices if d["usable_bytes"] > 0]
    if needed and usable and max(usable) > 20 * min(needed):  # a small model next to big devices
        layout["yaxis"].update(type="log", dtick=1)  # one label per decade
        layout["title"]["text"] += " (log scale)"
    else:
        layout["yaxis"]["rangemode"] = "tozero"
    layout["legend"]["y"] = -0.2
    return {"fig-kv-memory": make_figure(data, layout)}


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
    layout = base_layout(
        "Time per layer by component", "layer", f"{unit} per forward (profiled)", barmode="stack"
    )
    layout["xaxis"].update(tickformat="d", dtick=1 if len(layers) <= 16 else None)
    layout["legend"]["traceorder"] = "normal"
    return {"fig-timing-layers": make_figure(bars, layout)}


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
