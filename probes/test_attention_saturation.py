"""attention_saturation: no layer with heads whose attention temperature is broken (runaway logits
and collapsed attention, or flat attention with logits far narrower than any healthy head's)."""

from __future__ import annotations

from .checks import assert_no_fail


def test_no_saturated_layer(diagnosis):
    assert_no_fail(diagnosis, "attention_saturation", "saturated_layer")


def test_no_flat_layer(diagnosis):
    assert_no_fail(diagnosis, "attention_saturation", "flat_layer")


def test_attention_recorded(diagnosis):
    assert_no_fail(diagnosis, "attention_saturation", "recorded")
