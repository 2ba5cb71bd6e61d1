"""Finding: one verdict of one analyzer about one place in the model.

Analyzers return lists of findings; reports, the terminal and the probes suite only read them.
A finding says where (layer / head / expert / position range), how bad (a metric's value against
its threshold), what it means and what to do about it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "info", "warn", "fail", "skip"]
STATUS_ORDER: dict[str, int] = {"pass": 0, "info": 1, "skip": 2, "warn": 3, "fail": 4}


@dataclass(frozen=True)
class Where:
    """A place in the model. Fields that do not apply stay None."""

    layer: int | None = None
    head: int | None = None
    expert: int | None = None
    positions: tuple[int, int] | None = None  # [start, end) token positions
    sublayer: str | None = None  # "attn", "mlp", "moe", "embed", ...
    experts: tuple[int, ...] | None = None  # several experts of one layer (e.g. the dead ones)

    def __str__(self) -> str:
        parts = []
        if self.layer is not None:
            parts.append(f"L{self.layer}")
        if self.head is not None:
            parts.append(f"H{self.head}")
        if self.expert is not None:
            parts.append(f"E{self.expert}")
        if self.experts:
            shown = ",".join(map(str, self.experts[:8]))
            parts.append(f"E{shown}" + (f",+{len(self.experts) - 8}" if len(self.experts) > 8 else ""))
        if self.sublayer:
            parts.append(self.sublayer)
        if self.positions is not None:
            parts.append(f"pos {self.positions[0]}-{self.positions[1]}")
        return " ".join(parts) or "model"


@dataclass(frozen=True)
class Finding:
    """One analyzer verdict.

    ``status``: pass (checked, healthy), info (worth knowing, not a problem: e.g. a sink head),
    warn (suspicious), fail (the pathology the check exists for), skip (could not be computed;
    ``message`` says why).
    """

    analyzer: str
    check: str
    status: Status
    message: str
    where: Where = field(default_factory=Where)
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["where"] = {k: v for k, v in data["where"].items() if v is not None}
        if self.where.positions is not None:
            data["where"]["positions"] = list(self.where.positions)
        if self.where.experts is not None:
            data["where"]["experts"] = list(self.where.experts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        data = dict(data)
        where = dict(data.pop("where", {}))
        if "positions" in where:
            where["positions"] = tuple(where["positions"])
        if "experts" in where:
            where["experts"] = tuple(where["experts"])
        return cls(where=Where(**where), **data)


def worst_status(findings: list[Finding]) -> Status:
    """The most severe status among ``findings`` ("pass" for an empty list)."""
    if not findings:
        return "pass"
    return max((f.status for f in findings), key=STATUS_ORDER.__getitem__)


def count_by_status(findings: list[Finding]) -> dict[str, int]:
    counts = {status: 0 for status in STATUS_ORDER}
    for finding in findings:
        counts[finding.status] += 1
    return counts


def sort_key(finding: Finding | dict[str, Any]) -> tuple[Any, ...]:
    """The one order of findings everywhere (report.json, HTML, terminal): most severe first
    (fail, warn, skip, info, pass), then by analyzer, place (layer, head, expert) and check."""
    data = finding.to_dict() if isinstance(finding, Finding) else finding
    where = data.get("where") or {}
    place = tuple(where.get(k) if where.get(k) is not None else -1 for k in ("layer", "head", "expert"))
    return (-STATUS_ORDER.get(data["status"], 0), data["analyzer"], place, data["check"])


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """``findings`` in the one order (see :func:`sort_key`)."""
    return sorted(findings, key=sort_key)


def summarize(findings: list[Finding]) -> dict[str, Any]:
    """The report's summary: overall status (fail, warn or pass), counts, worst status per analyzer."""
    by_analyzer = {analyzer: worst_status([f for f in findings if f.analyzer == analyzer])
                   for analyzer in {f.analyzer for f in findings}}
    status = worst_status([f for f in findings if f.status in ("fail", "warn")])
    return {"status": status if status in ("fail", "warn") else "pass", "counts": count_by_status(findings),
            "analyzers": dict(sorted(by_analyzer.items()))}
