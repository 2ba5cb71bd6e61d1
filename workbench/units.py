"""Formatting of numbers, bytes and times for people: the one home of every such formatter.

Pure functions from values to short strings (an em dash for a missing value). The terminal, the
HTML report and the messages of analyzers all use these.
"""

from __future__ import annotations

from typing import Any

GIB = 2**30
MIB = 2**20


def gib(value: int | float) -> str:
    """``value`` bytes as GiB with two decimals (``15.00 GiB``)."""
    return f"{value / GIB:,.2f} GiB"


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


def format_bytes(value: int | float | None, dash: str = "\u2014") -> str:
    """Bytes in GiB (2**30) from one GiB up, else MiB; ``dash`` for None."""
    if value is None:
        return dash
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


def format_duration(seconds: float) -> str:
    """A wait as people say it: ``8 s``, ``1 min 40 s``, ``14 min``, ``3.0 h``."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 600:
        return f"{int(seconds // 60)} min {round(seconds % 60):02d} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plural(count: int | float, noun: str, plural_form: str | None = None) -> str:
    """``1 token``, ``2 tokens``, ``1,024 tokens`` (thousands separators for integers)."""
    shown = f"{count:,}" if isinstance(count, int) else f"{count:g}"
    return f"{shown} {noun if count == 1 else (plural_form or noun + 's')}"
