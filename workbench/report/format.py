"""Formatting shared by the HTML page and the terminal tables: numbers, bytes, times, places.

Pure functions from report values to short strings; :func:`breakable` alone returns markup (for
the HTML page, escaped first).
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from workbench.findings import Where, sort_key
from workbench.report.text import token_text
from workbench.units import format_bytes, format_number, format_seconds, format_si, format_us

__all__ = ["breakable", "format_bytes", "format_number", "format_seconds", "format_si", "format_us",
           "sorted_findings", "value_text", "visible_text", "where_text"]


def visible_text(value: str) -> str:
    """A token shown visibly: newline, tab, carriage return as symbols, other control characters
    as escapes, a token of spaces as ``␣`` (see :func:`workbench.report.text.token_text`)."""
    return token_text(value)


def breakable(value: Any) -> Markup:
    """Escaped text with line-break opportunities after ``_`` and ``.`` (long snake_case names)."""
    escaped = str(Markup.escape(str(value)))
    return Markup(escaped.replace("_", "_<wbr>").replace(".", ".<wbr>"))


def where_text(where: dict[str, Any] | None) -> str:
    """``L3 H5``, ``L2 E7 moe``, ``pos 0-512``, or ``model``."""
    data = dict(where or {})
    if data.get("positions") is not None:
        data["positions"] = tuple(data["positions"])
    if data.get("experts") is not None:
        data["experts"] = tuple(data["experts"])
    known = {key: data.get(key) for key in ("layer", "head", "expert", "positions", "sublayer", "experts")}
    return str(Where(**known))


def value_text(finding: dict[str, Any]) -> str:
    value, threshold = finding.get("value"), finding.get("threshold")
    if value is None and threshold is None:
        return ""
    if threshold is None:
        return format_number(value)
    return f"{format_number(value)} vs {format_number(threshold)}"


def sorted_findings(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Findings in the one order of :func:`workbench.findings.sort_key`."""
    return sorted(findings, key=sort_key)
