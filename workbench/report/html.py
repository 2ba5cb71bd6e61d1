"""report.html: one self-contained page over the report document, readable offline.

``render_html(report)`` returns the page as a string. It inlines everything it needs: the CSS and
script in ``assets/``, and plotly.js from the installed plotly package; nothing is fetched from
the network (a Content-Security-Policy meta tag forbids it, and allows only the page's own two
scripts, by hash).

Safety, since model names, prompts and token strings are untrusted text:

* the jinja2 environment autoescapes every ``{{ }}``;
* chart data travels as JSON inside ``<script type="application/json">`` blocks, with ``<``, ``>``,
  ``&`` and U+2028/2029 written as ``\\uXXXX`` escapes (:func:`script_json`) so no string can close
  the block, and is read back with ``JSON.parse(textContent)``;
* strings inside charts are escaped for Plotly's own markup (:func:`figures.plot_text`);
* DOM ids are fixed strings chosen here, never derived from report data;
* the page's script sets text through ``textContent`` and never uses ``innerHTML``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from workbench.findings import STATUS_ORDER
from workbench.report import figures as figs
from workbench.report.format import (
    breakable,
    format_bytes,
    format_number,
    format_seconds,
    format_si,
    format_us,
    sorted_findings,
    value_text,
    visible_text,
    where_text,
)
from workbench.report.patterns import pattern_views
from workbench.report.schema import SECTION_ANALYZERS, SECTIONS

SECTION_TITLES = {
    "attention": "Attention", "residual": "Residual stream", "routing": "Routing", "length": "Length",
    "kv": "KV cache", "timing": "Timing",
}  # fmt: skip
TOKEN_STRIP_LIMIT = 512  # tokens listed under the pattern viewer
SECTION_FINDINGS_LIMIT = 12  # fail/warn/skip findings repeated at the top of their section


def script_json(value: Any) -> str:
    """JSON safe to place inside ``<script type="application/json">``: nothing in it can end the
    element or open a comment, whatever the strings contain."""
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(raw, escaped)
    return text


def _asset(name: str) -> str:
    return (resources.files("workbench.report") / "assets" / name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js as bundled with the installed plotly package (a few MB, read once)."""
    from plotly.offline import get_plotlyjs  # noqa: PLC0415 - plotly.js (MBs) only when a page is rendered

    source = get_plotlyjs()
    # Cannot occur in today's bundle; guards the inline <script> should a later one contain it.
    return source.replace("</script", "<\\/script").replace("<!--", "<\\!--")


def _csp_hash(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("workbench.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=format_number,
        gib=format_bytes,
        us=format_us,
        si=format_si,
        seconds=format_seconds,
        where=where_text,
        visible=visible_text,
        breakable=breakable,
    )
    return env


# --- page context --------------------------------------------------------------------------


def _worst(statuses: list[str]) -> str | None:
    return max(statuses, key=lambda s: STATUS_ORDER.get(s, 0)) if statuses else None


def _link(path: Any) -> str | None:
    """A relative path fit for ``href`` (inside the report folder), else None (shown as text)."""
    if not isinstance(path, str) or not path or ":" in path or path.startswith(("/", "\\")):
        return None
    if ".." in path.replace("\\", "/").split("/"):
        return None
    return path


def _token_strip(attention: dict[str, Any]) -> list[tuple[int, str]]:
    labels = attention.get("token_labels") or []
    extent = max(
        (max(p["start"] + len(p["pattern"]), max((len(r) for r in p["pattern"]), default=0))
         for p in attention.get("patterns") or []),
        default=len(labels),
    )  # fmt: skip
    shown = min(len(labels), extent, TOKEN_STRIP_LIMIT)
    return list(enumerate(labels[:shown]))


def _sections(report: dict[str, Any], figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    findings = sorted_findings(report.get("findings") or [])
    sections = {}
    for name in SECTIONS:
        own = [f for f in findings if f["analyzer"] in SECTION_ANALYZERS.get(name, ())]
        sections[name] = {
            "title": SECTION_TITLES[name],
            "ran": report.get(name) is not None,
            "figures": [key for key in figures if key.startswith(f"fig-{name}-")],
            "findings": [f for f in own if f["status"] in ("fail", "warn", "skip")][:SECTION_FINDINGS_LIMIT],
            "n_more": max(
                0, sum(f["status"] in ("fail", "warn", "skip") for f in own) - SECTION_FINDINGS_LIMIT
            ),
            "n_info": sum(f["status"] == "info" for f in own),
            "n_pass": sum(f["status"] == "pass" for f in own),
            "status": _worst([f["status"] for f in own]),
        }
    return sections


def _default_pattern(report: dict[str, Any]) -> int:
    """Index of the pattern to show first: the head of the most severe attention finding that
    has a captured pattern, else the first."""
    patterns = (report.get("attention") or {}).get("patterns") or []
    index = {(p["layer"], p["head"]): i for i, p in enumerate(patterns)}
    for finding in sorted_findings(report.get("findings") or []):
        where = finding.get("where") or {}
        key = (where.get("layer"), where.get("head"))
        if (
            finding["analyzer"] in SECTION_ANALYZERS["attention"]
            and finding["status"] != "pass"
            and key in index
        ):
            return index[key]
    return 0


def _trace_links(report: dict[str, Any]) -> list[dict[str, Any]]:
    artifacts = report.get("artifacts") or {}
    trace = ((report.get("timing") or {}).get("trace")) or {}
    entries = [
        ("TensorBoard run folder", artifacts.get("trace_dir") or trace.get("tensorboard_dir")),
        (
            "Chrome trace (Perfetto, chrome://tracing)",
            artifacts.get("chrome_trace") or trace.get("chrome_trace"),
        ),
    ]
    return [{"label": label, "path": path, "href": _link(path)} for label, path in entries if path]


def render_html(report: dict[str, Any]) -> str:
    """The report page for a (valid, JSON-ready) report document."""
    figures = figs.all_figures(report)
    attention = report.get("attention") or {}
    patterns = pattern_views(attention) if attention else {"frames": [], "heads": []}
    page_js = _asset("report.js")
    bundle = plotly_js()
    routing_rows = [
        {**layer, **figs.routing_summary(layer)} for layer in (report.get("routing") or {}).get("layers", [])
    ]
    timing = report.get("timing") or {}
    # Op shares are of the profiled forward (the ops' self times add up to at most that), so they
    # read like the component shares; an older report without totals falls back to the ops' sum.
    profiled_us = ((timing.get("components") or {}).get("totals") or {}).get("forward_us")
    top_self = profiled_us or sum(op.get("self_cpu_us") or 0 for op in timing.get("top_ops") or [])
    context = {
        "report": report,
        "tool": report["tool"],
        "run": report["run"],
        "model": report["model"],
        "summary": report["summary"],
        "findings": sorted_findings(report.get("findings") or []),
        "has_fix": any(f.get("fix") for f in report.get("findings") or []),
        "statuses": sorted(STATUS_ORDER, key=STATUS_ORDER.__getitem__, reverse=True),
        "sections": _sections(report, figures),
        "value_text": value_text,
        "pretty_json": lambda value: json.dumps(value, indent=2, sort_keys=True),
        "pattern_options": [
            f"L{p['layer']} H{p['head']} \u00b7 queries {p['start']}\u2013{p['start'] + len(p['pattern']) - 1}"
            for p in attention.get("patterns") or []
        ],
        "token_strip": _token_strip(attention) if attention else [],
        "pattern_default": _default_pattern(report),
        "routing_rows": routing_rows,
        "top_self_us": top_self,
        "trace_links": _trace_links(report),
        # Markup: inserted verbatim. script_json output cannot leave its element, the others are
        # the package's own files.
        "figures_json": Markup(script_json(figures)),
        "patterns_json": Markup(script_json(patterns)),
        "plotly_js": Markup(bundle),
        "page_js": Markup(page_js),
        "css": Markup(_asset("report.css")),
        "script_hashes": f"{_csp_hash(bundle)} {_csp_hash(page_js)}",
    }
    return _environment().get_template("report.html.j2").render(context)
