"""Terminal renderables of `workbench zoo list`: the members grouped by the analyzer they are the
ground truth of, with the verdict each must get, where, and its twin.

Pure: it takes the member table (``workbench.zoo.MEMBERS``) and returns rich renderables;
``cli.py`` prints them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rich.table import Table


def zoo_tables(members: Mapping[str, Any]) -> list[Table]:
    """One table per analyzer, members in catalogue order. A pathology's verdict reads
    "fail L0 H0, L1 H0" (status and places); a healthy member's "no fail" (of that check). The
    twin column names a pathology's healthy twin, or the pathologies a healthy member is twin of."""
    twins_of: dict[str, list[str]] = {}
    for name, spec in members.items():
        if spec.healthy_twin:
            twins_of.setdefault(spec.healthy_twin, []).append(name)
    tables: dict[str, Table] = {}
    for name, spec in members.items():
        truth = spec.expect
        if truth.analyzer not in tables:
            table = Table(title=truth.analyzer, title_justify="left", title_style="bold", box=None,
                          header_style="dim", pad_edge=False, collapse_padding=True)
            for column in ("member", "verdict", "check", "twin"):
                table.add_column(column, no_wrap=column != "twin")
            tables[truth.analyzer] = table
        # the sublayer is the analyzer's own (attn, moe): the layer, head or expert is the news
        places = ", ".join(str(dataclasses.replace(where, sublayer=None)) for where in truth.where)
        verdict = f"{truth.status} {places}" if places else (truth.status or "no fail")
        twin = spec.healthy_twin or ", ".join(twins_of.get(name, [])) or "-"
        tables[truth.analyzer].add_row(name, verdict, truth.check, twin)
    return list(tables.values())
