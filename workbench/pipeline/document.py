"""The report document (schema v1) around one run's findings and sections."""

from __future__ import annotations

import platform
import time
from datetime import datetime
from typing import Any

import torch
import transformers

import workbench
from workbench.findings import Finding, sort_findings, summarize
from workbench.report.schema import SCHEMA_NAME, SCHEMA_VERSION, SECTIONS, TIME_FIELDS


def versions() -> dict[str, Any]:
    """The tool and library versions a report records."""
    return {"name": "transformer-workbench", "version": workbench.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def document(options: Any, profile_name: str, seed: int, created: datetime, started: float,
             model_info: dict[str, Any], findings: list[Finding], probe: Any,
             sections: dict[str, Any]) -> dict[str, Any]:
    """The report document: run facts, model, summary, findings in the one order, sections."""
    return {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "tool": versions(),
        "run": {"id": "", "command": options.command, "created_utc": created.isoformat(timespec="seconds"),
                "duration_seconds": round(time.perf_counter() - started, 3), "profile": profile_name,
                "seed": seed, "device": options.device, "dtype": options.dtype, "backend": options.backend},
        "time_fields": list(TIME_FIELDS),
        "model": model_info,
        "summary": summarize(findings),
        "findings": [f.to_dict() for f in sort_findings(findings)],
        "probes": [{"name": probe.name, "kind": probe.kind, "length": probe.length, "seed": probe.seed,
                    "description": probe.description, "text": options.prompt}],
        **{name: sections.get(name) for name in SECTIONS},
        "artifacts": {"report_json": "report.json", "report_html": "report.html", "trace_dir": None,
                      "chrome_trace": None},
    }
