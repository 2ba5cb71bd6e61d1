"""nonfinite: weights and activations are finite."""

from __future__ import annotations

from .checks import assert_no_fail


def test_weights_finite(diagnosis):
    assert_no_fail(diagnosis, "nonfinite", "weights")


def test_activations_finite(diagnosis):
    assert_no_fail(diagnosis, "nonfinite", "activations")
