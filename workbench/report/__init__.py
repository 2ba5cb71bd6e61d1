"""Reports: the versioned JSON document of a run, its HTML view and its terminal tables.

* :mod:`workbench.report.schema`: the document's version, its time fields and ``validate``;
* :mod:`workbench.report.writer`: ``write_report`` writes a run's folder atomically;
* :mod:`workbench.report.html`: ``render_html``, one self-contained offline page;
* :mod:`workbench.report.terminal`: rich renderables for the CLI.

The submodules import lazily so that reading a report does not import plotly or jinja2.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "SCHEMA_VERSION": "workbench.report.schema",
    "TIME_FIELDS": "workbench.report.schema",
    "validate": "workbench.report.schema",
    "strip_time_fields": "workbench.report.schema",
    "ReportError": "workbench.report.writer",
    "write_report": "workbench.report.writer",
    "slug": "workbench.report.writer",
    "render_html": "workbench.report.html",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench.report' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
