"""SmolLM2-135M (a healthy trained model) under the default profile: no saturation or routing
failure, and its sink heads reported as sinks."""

from __future__ import annotations

import pytest

from workbench.pipeline.run import RunOptions, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report() -> dict:
    return run("smollm2", RunOptions(command="attention", profile="default")).report


def test_no_saturation_failure_on_a_healthy_trained_model(report):
    fails = [f["message"] for f in report["findings"]
             if f["analyzer"] == "attention_saturation" and f["status"] == "fail"]
    assert fails == []
    assert report["attention"]["n_layers"] == 30 and report["attention"]["n_heads"] == 9


def test_sink_heads_are_reported_as_sinks(report):
    sinks = [f for f in report["findings"] if f["check"] == "sink_heads"]
    assert sinks and all(f["status"] == "info" for f in sinks)
    # sinks live in the upper half of SmolLM2 (measured: layers 12-29), never in layer 0
    assert all(f["where"]["layer"] >= 10 for f in sinks)
    strongest = max(sinks, key=lambda f: f["value"])
    assert strongest["value"] > 0.9


def test_routing_is_skipped_for_a_dense_model():
    report = run("smollm2", RunOptions(command="routing", profile="ci", tokens=64)).report
    statuses = {f["status"] for f in report["findings"] if f["analyzer"] == "routing_collapse"}
    assert statuses == {"skip"}
