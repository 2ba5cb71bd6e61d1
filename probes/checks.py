"""Assertion helpers for the probes suite: fail a test with the findings' own messages."""

from __future__ import annotations

from typing import Any

import pytest


def findings_of(report: dict[str, Any], analyzer: str, check: str | None = None) -> list[dict[str, Any]]:
    return [f for f in report["findings"]
            if f["analyzer"] == analyzer and (check is None or f["check"] == check or f["check"].startswith(check))]


def assert_no_fail(report: dict[str, Any], analyzer: str, check: str | None = None) -> None:
    """Fail with every ``fail`` finding's message (and fix) for ``analyzer``/``check``."""
    failed = [f for f in findings_of(report, analyzer, check) if f["status"] == "fail"]
    if failed:
        lines = []
        for finding in failed:
            lines.append(f"[{finding['analyzer']}/{finding['check']}] {finding['message']}")
            if finding.get("fix"):
                lines.append(f"    fix: {finding['fix']}")
        pytest.fail("\n".join(lines), pytrace=False)
    skipped = [f for f in findings_of(report, analyzer, check) if f["status"] == "skip"]
    covered = [f for f in findings_of(report, analyzer, check) if f["status"] != "skip"]
    if skipped and not covered:
        pytest.skip("; ".join(f["message"] for f in skipped))
