"""The zoo's members in one table, each with its config, task, training recipe and ground truth
(what must be flagged where); :mod:`workbench.zoo.members` defines them by analyzer."""

from __future__ import annotations

from workbench.zoo.members import attention, length, precision, routing
from workbench.zoo.recipe import GroundTruth, ZooSpec

__all__ = ["MEMBERS", "ground_truth"]

# in build order: attention, routing, length, precision members
MEMBERS: dict[str, ZooSpec] = {
    spec.name: spec for spec in (*attention.SPECS, *routing.SPECS, *length.SPECS, *precision.SPECS)
}


def ground_truth(name: str) -> GroundTruth:
    """What an analyzer must report for member ``name`` (status None: nothing may fail)."""
    return _spec(name).expect


def _spec(name: str) -> ZooSpec:
    if name not in MEMBERS:
        raise KeyError(f"no zoo member {name!r}; choose one of {', '.join(MEMBERS)}")
    return MEMBERS[name]
