"""kv_memory: the profile's deployment (device, batch, context) fits in memory."""

from __future__ import annotations

from .checks import assert_no_fail


def test_deployment_fits(diagnosis):
    assert_no_fail(diagnosis, "kv_memory", "fits")
