"""length_extrapolation: the model copes with inputs as long as it claims (and past them)."""

from __future__ import annotations

from .checks import assert_no_fail


def test_position_table_covers_probes(diagnosis):
    assert_no_fail(diagnosis, "length_extrapolation", "position_table")


def test_forward_runs_within_the_claim(diagnosis):
    assert_no_fail(diagnosis, "length_extrapolation", "forward")
    assert_no_fail(diagnosis, "length_extrapolation", "nonfinite_loss")


def test_loss_holds_within_the_claim(diagnosis):
    assert_no_fail(diagnosis, "length_extrapolation", "loss_within_claim")


def test_declared_rope_scaling_holds(diagnosis):
    assert_no_fail(diagnosis, "length_extrapolation", "rope_scaling")


def test_loss_holds_beyond_the_claim(diagnosis):
    # a warn under the default profile; profiles that target extrapolation (long) make it a fail
    assert_no_fail(diagnosis, "length_extrapolation", "loss_beyond_claim")
