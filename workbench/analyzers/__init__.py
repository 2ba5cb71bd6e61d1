"""Analyzers: pure functions from records (and a config) to findings.

Each module names itself (``NAME``), declares its thresholds as ``THRESHOLDS = {name: (default,
source)}`` (mirrored in profiles/default.toml, where a profile may override them), and exposes
``analyze(record, thresholds) -> list[Finding]``. No nn.Module, no I/O.
"""

from __future__ import annotations

from typing import Any


def merged_thresholds(defaults: dict[str, tuple[Any, str]], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The analyzer's default values with a profile's ``[thresholds.<analyzer>]`` laid over them."""
    values = {name: default for name, (default, _) in defaults.items()}
    values.update(overrides or {})
    return values
