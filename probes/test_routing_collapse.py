"""routing_collapse: every MoE layer uses its experts (skipped for dense models)."""

from __future__ import annotations

from .checks import assert_no_fail


def test_no_dead_experts(diagnosis):
    assert_no_fail(diagnosis, "routing_collapse", "dead_experts")


def test_no_collapse_onto_one_expert(diagnosis):
    assert_no_fail(diagnosis, "routing_collapse", "first_choice")


def test_router_trained(diagnosis):
    assert_no_fail(diagnosis, "routing_collapse", "router_entropy")


def test_router_balanced(diagnosis):
    assert_no_fail(diagnosis, "routing_collapse", "max_load_violation")
    assert_no_fail(diagnosis, "routing_collapse", "balance_loss")


def test_routing_recorded(diagnosis):
    assert_no_fail(diagnosis, "routing_collapse", "moe")
