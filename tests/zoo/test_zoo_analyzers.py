"""The analyzers against the zoo's ground truth: every pathology is flagged `fail` by its analyzer
at the right place, every healthy twin gets no `fail` at all, and the probes suite fails on a
pathology with a readable message and passes its twin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workbench import zoo
from workbench.pipeline.run import RunOptions, run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def members(built) -> dict[str, Path]:
    return built.paths  # conftest's session build, shared with test_zoo


@pytest.fixture(scope="module")
def reports(members) -> dict[str, dict]:
    return {name: run(str(path), RunOptions(command="check", profile="default")).report for name, path in members.items()}


def matches(finding: dict, where) -> bool:
    """Every field ``where`` sets equals the finding's."""
    got = finding.get("where") or {}
    for field in ("layer", "head", "expert"):
        wanted = getattr(where, field)
        if wanted is not None and got.get(field) != wanted:
            return False
    return True


@pytest.mark.parametrize("name", [n for n, spec in zoo.MEMBERS.items() if spec.expect.status == "fail"])
def test_every_pathology_is_flagged_where_it_is(name, reports):
    truth = zoo.ground_truth(name)
    fails = [f for f in reports[name]["findings"]
             if f["analyzer"] == truth.analyzer and f["check"].startswith(truth.check) and f["status"] == "fail"]
    assert fails, f"{name}: no {truth.analyzer}/{truth.check} fail in {reports[name]['summary']}"
    for where in truth.where:
        assert any(matches(f, where) for f in fails), (name, where, [f["where"] for f in fails])


@pytest.mark.parametrize("name", [n for n, spec in zoo.MEMBERS.items() if spec.expect.status is None])
def test_every_healthy_member_gets_no_fail(name, reports):
    # every member is trained at (and, but for the overclaimed one, claims) its context: models
    # that stop coping past it are a warn under the default profile, never a fail
    fails = [f"{f['analyzer']}/{f['check']} {f['where']}: {f['message']}"
             for f in reports[name]["findings"] if f["status"] == "fail"]
    assert fails == []


def test_a_healthy_sink_is_info_and_the_same_head_unscaled_fails_on_the_first_token(reports):
    sinks = [f for f in reports["sink-text"]["findings"] if f["check"] == "sink_heads"]
    assert [(f["status"], f["where"]["layer"], f["where"]["head"]) for f in sinks] == [("info", 1, 0)]
    fails = [f for f in reports["sink-unscaled"]["findings"] if f["status"] == "fail"]
    assert [(f["check"], f["where"]["layer"], f["where"]["head"]) for f in fails] == [("saturated_layer", 1, 0)]
    assert "one-hot on the first token" in fails[0]["message"]
    assert not [f for f in reports["sink-unscaled"]["findings"] if f["check"] == "sink_heads"]


@pytest.mark.parametrize("name", [n for n, spec in zoo.MEMBERS.items() if spec.expect.status == "warn"])
def test_every_honest_limit_is_a_warn_not_a_fail(name, reports):
    truth = zoo.ground_truth(name)
    found = [f for f in reports[name]["findings"] if f["analyzer"] == truth.analyzer and f["check"] == truth.check]
    assert found and {f["status"] for f in found} == {"warn"}, found
    assert all(f["where"]["positions"][0] >= zoo.TRAINED_CONTEXT for f in found)


def probes(checkpoint: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "within-context.toml"  # no probe past the 64-token training context
    profile.write_text('name = "within-context"\n[probes]\nextrapolation_factors = [0.5, 1.0]\nlengths = []\n')
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "probes"), "--checkpoint", str(checkpoint), "-q",
         "--profile", str(profile),
         "-p", "no:cacheprovider", f"--junitxml={tmp_path / 'junit.xml'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )


def test_probes_fail_on_a_pathology_and_pass_its_twin(members, tmp_path):
    sick = probes(members["unscaled-attention"], tmp_path)
    assert sick.returncode == 1, sick.stdout[-3000:]
    assert "test_no_saturated_layer" in sick.stdout
    assert "runaway logits and collapsed attention" in sick.stdout and "fix: Scale attention logits" in sick.stdout
    assert 'failures="1"' in (tmp_path / "junit.xml").read_text()
    healthy = probes(members["scaled-attention"], tmp_path)
    assert healthy.returncode == 0, healthy.stdout[-3000:]
