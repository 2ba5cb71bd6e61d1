"""attention_saturation: no layer whose heads attend one-hot to content tokens."""

from __future__ import annotations

from .checks import assert_no_fail


def test_no_saturated_layer(diagnosis):
    assert_no_fail(diagnosis, "attention_saturation", "saturated_layer")


def test_attention_recorded(diagnosis):
    assert_no_fail(diagnosis, "attention_saturation", "recorded")
