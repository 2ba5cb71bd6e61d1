"""The stored form of a report: the same data, its bulky arrays at the precision the report shows.

Nine tenths of a report are per-head arrays: attention statistics by position ([layers][heads]
[positions], seven of them) and the full patterns of every head over the first tokens. They are
stored, not dropped; :func:`compact` only removes what carries no information:

* a pattern row ends at its diagonal: in a decoder query ``q`` attends to keys ``0..q`` only, so
  the keys after it always hold 0 (a row is cut only where everything after the diagonal is 0);
* pattern weights are rounded to 3 decimals (the viewer shows ``weight 0.123``);
* statistics by position (attention and residual) keep 4 significant digits (float16 keeps
  about 3.3).

Head means, findings, losses and every scalar are left exactly as recorded. ``compact`` returns
a new document and never modifies its argument.
"""

from __future__ import annotations

import math
from typing import Any

PATTERN_DECIMALS = 3
STAT_DIGITS = 4


def _significant(value: Any, digits: int) -> Any:
    if isinstance(value, list):
        return [_significant(item, digits) for item in value]
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value


def _pattern_row(row: list[Any], query: int) -> list[Any]:
    tail = row[query + 1:]
    kept = row[: query + 1] if all(weight in (0, None) for weight in tail) else row
    return [round(weight, PATTERN_DECIMALS) if isinstance(weight, float) else weight for weight in kept]


def compact_pattern(captured: dict[str, Any]) -> dict[str, Any]:
    """One captured pattern (``{layer, head, start, pattern}``) with rows cut at the diagonal and
    weights rounded."""
    start = captured["start"]
    rows = [_pattern_row(row, start + index) for index, row in enumerate(captured["pattern"])]
    return {**captured, "pattern": rows}


def compact(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` as it is stored (see the module docstring)."""
    stored = dict(report)
    attention = report.get("attention")
    if attention:
        stored["attention"] = {
            **attention,
            "by_position": {stat: _significant(values, STAT_DIGITS)
                            for stat, values in (attention.get("by_position") or {}).items()},
            "patterns": [compact_pattern(captured) for captured in attention.get("patterns") or []],
        }
    residual = report.get("residual")
    if residual and residual.get("by_position"):
        stored["residual"] = {
            **residual,
            "by_position": {stat: _significant(values, STAT_DIGITS)
                            for stat, values in residual["by_position"].items()},
        }
    return stored
