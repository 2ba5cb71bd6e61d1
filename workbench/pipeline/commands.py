"""The command table: which concerns each command runs."""

from __future__ import annotations

COMMANDS: dict[str, set[str]] = {
    "diagnose": {"attention", "residual", "routing", "loss", "length", "kv", "timing", "nonfinite"},
    "attention": {"attention", "loss", "nonfinite"},  # the loss tells untrained from broken
    "residual": {"residual", "loss", "nonfinite"},
    "routing": {"routing", "loss", "nonfinite"},  # the loss tells an untrained model from a lost gate
    "extrapolation": {"length", "nonfinite"},
    "profile": {"timing"},
    # what `pytest probes/` (and `workbench check`) runs: every analyzer, no profiler trace
    "check": {"attention", "residual", "routing", "loss", "length", "kv", "nonfinite"},
}
# Full patterns are kept for every head over the first PATTERN_ROWS tokens (the report's viewer).
PATTERN_ROWS = 48
