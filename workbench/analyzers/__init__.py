"""Analyzers: pure functions from records (and a config) to findings.

Each module names itself (``NAME``) and exposes ``analyze(record, thresholds) -> list[Finding]``.
Thresholds are written once, in ``profiles/default.toml`` (``[thresholds.<NAME>]``, each with its
source); :func:`merged_thresholds` lays a profile's overrides over those defaults. No nn.Module,
no I/O besides reading that shipped file once.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from workbench.settings import Profile, load_profile


@functools.cache
def _default_profile() -> Profile:
    return load_profile("default")


def default_thresholds(analyzer: str) -> dict[str, Any]:
    """The analyzer's thresholds as ``profiles/default.toml`` writes them."""
    return dict(_default_profile().thresholds[analyzer])


def threshold_sources(analyzer: str) -> dict[str, str]:
    """Where each default threshold of ``analyzer`` comes from."""
    return dict(_default_profile().threshold_sources[analyzer])


def merged_thresholds(analyzer: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The analyzer's default values with a profile's ``[thresholds.<analyzer>]`` laid over them."""
    values = default_thresholds(analyzer)
    values.update(overrides or {})
    return values


def at_chance(loss_nats: float | None, vocab_size: int | None, margin: float) -> bool:
    """Whether a probe loss sits within ``margin`` nats of chance (log V): an untrained model,
    whose uniform attention or routing is its nature, not a bug. False when either is unknown."""
    return loss_nats is not None and bool(vocab_size) and loss_nats >= math.log(vocab_size) - margin
