"""The stored form of a report (compact.py) and inert text (text.py).

The compact form must lose nothing the report shows: every pattern weight within half a unit of
its third decimal, rows cut only where every later key is 0, statistics within 4 significant
digits; and it must be small: measured here on a SmolLM2-shaped attention section (30 layers x 9
heads, 48-token patterns, 64 position buckets)."""

from __future__ import annotations

import json
import math
import random

import pytest
from report_sample import sample_report

from workbench.report.compact import compact, compact_pattern
from workbench.report.patterns import pattern_figures, pattern_views
from workbench.report.text import printable
from workbench.report.writer import dumps
from workbench.units import plural

STATS = ("entropy", "entropy_norm", "max_prob", "argmax", "sink_mass", "mean_distance", "logit_std")


def smollm2_shaped_attention(seed: int = 0) -> dict:
    """Attention data of the shape a SmolLM2 run stores, with causal softmax rows rounded as the
    recorder rounds them (2 significant digits)."""
    rng = random.Random(seed)
    layers, heads, rows, buckets = 30, 9, 48, 64
    patterns = []
    for layer in range(layers):
        for head in range(heads):
            pattern = []
            for query in range(rows):
                weights = [rng.expovariate(1.0) ** 3 for _ in range(query + 1)]
                total = sum(weights)
                pattern.append([float(f"{w / total:.2g}") for w in weights] + [0.0] * (rows - query - 1))
            patterns.append({"layer": layer, "head": head, "start": 0, "pattern": pattern})
    by_position = {stat: [[[float(f"{rng.uniform(0, 4):.5g}") for _ in range(buckets)] for _ in range(heads)]
                          for _ in range(layers)] for stat in STATS}
    return {"patterns": patterns, "by_position": by_position}


def test_compact_keeps_what_the_report_plots_within_its_precision():
    report = sample_report()
    stored = compact(report)
    assert stored["findings"] == report["findings"] and stored["attention"]["head_means"] == report["attention"]["head_means"]
    for before, after in zip(report["attention"]["patterns"], stored["attention"]["patterns"], strict=True):
        for index, (row, kept) in enumerate(zip(before["pattern"], after["pattern"], strict=True)):
            assert len(kept) in (before["start"] + index + 1, len(row))
            assert all(weight == 0 for weight in row[len(kept):])  # only zeros were cut
            assert all(abs(a - b) <= 0.0005 + 1e-12 for a, b in zip(row, kept, strict=False) if a is not None)
    for stat, values in report["attention"]["by_position"].items():
        flat_before = [v for layer in values for head in layer for v in head]
        flat_after = [v for layer in stored["attention"]["by_position"][stat] for head in layer for v in head]
        for a, b in zip(flat_before, flat_after, strict=True):
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=5e-4, abs_tol=1e-12)
    assert report == sample_report()  # the argument is not modified


def test_a_row_with_weight_past_the_diagonal_is_kept_whole():
    captured = {"layer": 0, "head": 0, "start": 0, "pattern": [[0.5, 0.25, 0.25], [0.1234567, 0.9, 0.0]]}
    assert compact_pattern(captured)["pattern"] == [[0.5, 0.25, 0.25], [0.123, 0.9]]


def test_stored_attention_is_compact():
    attention = smollm2_shaped_attention()
    before = len(dumps({"attention": attention}))
    after = len(dumps(compact({"attention": attention})))
    # The diagonal cut removes 47/96 of the pattern cells and rounding shortens the rest; measured
    # 0.58 of the original on this data (the upper bound leaves room for other random draws).
    assert after < 0.65 * before, (before, after)
    assert after > 0.3 * before  # nothing the viewer draws was dropped (a sanity floor)


def test_pattern_views_rebuild_each_pattern_figure():
    report = compact(sample_report())
    views = pattern_views(report["attention"])
    assert len(views["heads"]) == len(report["attention"]["patterns"])
    assert len(views["frames"]) < len(views["heads"])  # shared axes and labels
    figures = pattern_figures(report["attention"])
    for head, figure in zip(views["heads"], figures, strict=True):
        width = len(figure["data"][0]["x"])
        assert all(len(row) == width for row in figure["data"][0]["z"])  # padded with nulls
        assert [row[: len(kept)] for row, kept in zip(figure["data"][0]["z"], head["z"], strict=True)] == head["z"]
    assert len(json.dumps(views)) < len(json.dumps(figures))


# --- inert text and wording ----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text [x]", "plain text [x]"),
    ("\x1b[2J\x1b]8;;http://x\x07", "\\x1b[2J\\x1b]8;;http://x\\x07"),
    ("a\u202eb\u2066c", "a\\u202eb\\u2066c"),
    ("\x9b31m", "\\x9b31m"),
    ("tab\tnew\nline\r", "tab\tnew\nline\u240d"),
])
def test_printable_makes_control_characters_inert(raw, shown):
    assert printable(raw) == shown
    assert not any(ord(c) < 32 and c not in "\n\t" for c in printable(raw))


def test_printable_one_line():
    assert printable("a\nb\tc", keep_newlines=False) == "a\u21b5b\u2192c"


def test_plural():
    assert (plural(1, "token"), plural(2, "token"), plural(1024, "token")) == ("1 token", "2 tokens", "1,024 tokens")
    assert plural(1, "passing check") == "1 passing check" and plural(0, "run") == "0 runs"
