"""Formatting shared by the HTML page and the terminal tables: numbers, bytes, times, places.

Pure functions from report values to short strings; :func:`breakable` alone returns markup (for
the HTML page, escaped first).
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from workbench.findings import STATUS_ORDER, Where


def format_number(value: Any, digits: int = 3) -> str:
    """A number for people: thousands separators for big ones, ``digits`` significant digits
    for small ones, an em dash for None."""
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 10**digits:
            return f"{value:,.0f}"
        if abs(value) >= 1e-3:
            return f"{value:.{digits}g}"
        return f"{value:.2e}"
    return str(value)


def format_bytes(value: int | None) -> str:
    if value is None:
        return "\u2014"
    if abs(value) >= 2**30:
        return f"{value / 2**30:,.2f} GiB"
    return f"{value / 2**20:,.1f} MiB"


def format_si(value: float | None, unit: str) -> str:
    """``1.32e13, "FLOP"`` -> ``13.2 TFLOP``."""
    if value is None:
        return "\u2014"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def visible_text(value: str) -> str:
    """Control characters of a token shown as symbols (newline, tab, carriage return)."""
    return value.replace("\n", "\u21b5").replace("\t", "\u2192").replace("\r", "\u240d")


def format_us(value: float | None) -> str:
    """Microseconds in the unit that reads best (µs, ms, s)."""
    if value is None:
        return "\u2014"
    return format_seconds(value / 1e6)


def format_seconds(value: float | None) -> str:
    if value is None:
        return "\u2014"
    if abs(value) >= 1:
        return f"{value:,.2f} s"
    if abs(value) >= 1e-3:
        return f"{value * 1e3:,.2f} ms"
    return f"{value * 1e6:,.1f} \u00b5s"


def breakable(value: Any) -> Markup:
    """Escaped text with line-break opportunities after ``_`` and ``.`` (long snake_case names)."""
    escaped = str(Markup.escape(str(value)))
    return Markup(escaped.replace("_", "_<wbr>").replace(".", ".<wbr>"))


def where_text(where: dict[str, Any] | None) -> str:
    """``L3 H5``, ``L2 E7 moe``, ``pos 0-512``, or ``model``."""
    data = dict(where or {})
    if data.get("positions") is not None:
        data["positions"] = tuple(data["positions"])
    known = {key: data.get(key) for key in ("layer", "head", "expert", "positions", "sublayer")}
    return str(Where(**known))


def value_text(finding: dict[str, Any]) -> str:
    value, threshold = finding.get("value"), finding.get("threshold")
    if value is None and threshold is None:
        return ""
    if threshold is None:
        return format_number(value)
    return f"{format_number(value)} vs {format_number(threshold)}"


def sorted_findings(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most severe first (fail, warn, skip, info, pass), then by analyzer, check and place."""

    def key(finding: dict[str, Any]) -> tuple[Any, ...]:
        where = finding.get("where") or {}
        place = tuple(where.get(k) if where.get(k) is not None else -1 for k in ("layer", "head", "expert"))
        return (-STATUS_ORDER.get(finding["status"], 0), finding["analyzer"], finding["check"], place)

    return sorted(findings, key=key)
