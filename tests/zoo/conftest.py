"""The whole zoo, built once for every test module here that needs it (training takes minutes)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from workbench import zoo


@dataclasses.dataclass
class BuiltZoo:
    paths: dict[str, Path]  # member -> checkpoint folder
    seconds: dict[str, float]  # member -> build seconds (wall), as reported to progress()
    total_seconds: float  # the whole build_all (see --durations for the fixture's setup time)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltZoo:
    """Every member built once per test session (test_zoo and test_zoo_analyzers share it), with
    its build time."""
    events: list[zoo.BuildProgress] = []
    start = time.perf_counter()
    paths = zoo.build_all(tmp_path_factory.mktemp("zoo"), progress=events.append)
    total = time.perf_counter() - start
    # one event before and one after each member, in order
    assert [(e.name, e.seconds is None) for e in events] == [
        (name, before) for name in zoo.MEMBERS for before in (True, False)
    ]
    assert str(events[0]) == f"training unscaled-attention (1/{len(zoo.MEMBERS)})"
    seconds = {e.name: e.seconds for e in events if e.seconds is not None}
    assert all(e.path == paths[e.name] for e in events if e.seconds is not None)
    return BuiltZoo(paths, seconds, total)
