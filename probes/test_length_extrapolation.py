"""length_extrapolation: the model copes with inputs as long as it claims (and past them)."""

from __future__ import annotations

from .checks import assert_no_fail


def test_position_table_covers_probes(diagnosis):
    assert_no_fail(diagnosis, "length_extrapolation", "position_table")


def test_loss_holds_beyond_context(diagnosis):
    assert_no_fail(diagnosis, "length_extrapolation", "loss_beyond_context")
