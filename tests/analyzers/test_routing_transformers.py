"""routing_collapse on MoEs it was not written against: tiny transformers Mixtrals trained here
(``tests/moe_cases.py``), saved with ``save_pretrained`` and loaded by the workbench's real loader.

Ground truth is measured with transformers in the test: first choices, per-token coverage and
router entropy from the model's own router logits on the same four inputs the pipeline routes,
and the next-token loss on held-out text. The verdicts must follow that truth, at the right layer
and expert. About 35 s on one CPU thread (two trainings of 300 steps).
"""

from __future__ import annotations

import copy
import math

import moe_cases
import pytest
import torch

from workbench.analyzers import routing_collapse
from workbench.pipeline.run import RunOptions, run

pytestmark = pytest.mark.slow
KINDS = ("natural", "structured", "repeated", "random")


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, dict]:
    """Each case: its transformers model, its folder, and transformers' measurements."""
    root = tmp_path_factory.mktemp("moe")
    collapsed = moe_cases.train(balance=0.0, skewed=True)
    balanced = moe_cases.train(balance=0.1, skewed=True)
    reset = moe_cases.reset_router(copy.deepcopy(balanced))
    out = {}
    for name, model in {"collapsed": collapsed, "balanced": balanced, "reset": reset}.items():
        truths = {kind: moe_cases.truth(model, moe_cases.probe_tokens(kind, seed=0)) for kind in KINDS}
        out[name] = {"folder": moe_cases.save(model, root / name), "truth": truths,
                     "loss": moe_cases.heldout_loss(model)}  # fmt: skip
    return out


@pytest.fixture(scope="module")
def reports(cases) -> dict[str, dict]:
    return {name: run(str(case["folder"]), RunOptions(command="routing", seed=0)).report for name, case in cases.items()}


def pooled(truths: dict, field: str) -> torch.Tensor:
    """(layers, E) mean over the four inputs (equal token counts), as the analyzer pools them."""
    return torch.tensor([getattr(truths[kind], field) for kind in KINDS]).mean(0)


def findings(report: dict, check: str) -> list[dict]:
    return [f for f in report["findings"] if f["analyzer"] == "routing_collapse" and f["check"] == check]


def excess(share: torch.Tensor) -> torch.Tensor:
    fair = 1 / moe_cases.N_EXPERTS
    return (share - fair) / (1 - fair)


def test_the_workbench_counts_what_transformers_routes(cases, reports) -> None:
    for name, case in cases.items():
        first = pooled(case["truth"], "first_share")
        coverage = pooled(case["truth"], "coverage")
        for finding in findings(reports[name], "first_choice"):
            got = torch.tensor(finding["details"]["first_choice_share"])
            torch.testing.assert_close(got, first[finding["where"]["layer"]].float(), atol=0.005, rtol=0)
        for finding in findings(reports[name], "dead_experts"):  # 0.005: 10 of 2,048 tokens
            got = torch.tensor(finding["details"]["coverage"])
            torch.testing.assert_close(got, coverage[finding["where"]["layer"]].float(), atol=0.005, rtol=0)


def test_top2_collapse_fails_first_choice_where_transformers_sees_it(cases, reports) -> None:
    truth = excess(pooled(cases["collapsed"]["truth"], "first_share"))  # (layers, E)
    fails = {(f["where"]["layer"], f["where"]["expert"]) for f in findings(reports["collapsed"], "first_choice")
             if f["status"] == "fail"}  # fmt: skip
    bound = routing_collapse.thresholds_from(None)["collapse_excess"]
    collapsed_layers = {(layer, int(row.argmax())) for layer, row in enumerate(truth) if float(row.max()) > bound}
    assert collapsed_layers, truth  # the case is what it claims: collapsed per transformers
    assert fails == collapsed_layers
    # slot shares alone would not fail it: every expert covers tokens, the busiest at most 2x fair
    coverage = pooled(cases["collapsed"]["truth"], "coverage")
    assert float(coverage.min()) > 0.1 * moe_cases.TOP_K / moe_cases.N_EXPERTS
    assert {f["status"] for f in findings(reports["collapsed"], "dead_experts")} == {"pass"}
    assert {f["status"] for f in findings(reports["collapsed"], "max_load_violation")} == {"pass"}


def test_the_balanced_twin_passes_and_keeps_a_domain_expert(cases, reports) -> None:
    truth = cases["balanced"]["truth"]
    bound = routing_collapse.thresholds_from(None)["collapse_excess"]
    assert float(excess(pooled(truth, "first_share")).max()) < bound - 0.1  # balanced per transformers
    statuses = {f["status"] for f in reports["balanced"]["findings"] if f["analyzer"] == "routing_collapse"}
    assert statuses == {"pass"}
    # an expert that is nearly idle on random ids but busy on text: a domain expert, not a dead one
    fair = moe_cases.TOP_K / moe_cases.N_EXPERTS
    random_cov = torch.tensor(truth["random"].coverage)
    natural_cov = torch.tensor(truth["natural"].coverage)
    domain = (random_cov < 0.1 * fair) & (natural_cov > 0.5 * fair)
    assert bool(domain.any()), (random_cov, natural_cov)


def test_a_reset_router_fails_entropy_and_costs_loss(cases, reports) -> None:
    reset, balanced = cases["reset"], cases["balanced"]
    entropy = pooled(reset["truth"], "entropy_norm")
    assert float(entropy.min()) > 0.985  # transformers: near log E in every layer
    assert reset["loss"] > balanced["loss"] + 0.2  # the router mattered (nats)
    fails = sorted(f["where"]["layer"] for f in findings(reports["reset"], "router_entropy") if f["status"] == "fail")
    assert fails == [0, 1]
    for finding in findings(reports["reset"], "router_entropy"):
        assert finding["value"] == pytest.approx(float(entropy[finding["where"]["layer"]]), abs=0.002)
    # balance near 1 proves nothing here, and the noise in first choices is not called collapse
    for check in ("balance_loss", "first_choice"):
        assert {f["status"] for f in findings(reports["reset"], check)} == {"skip"}
    # the trained twins are well below the untrained level
    for name in ("collapsed", "balanced"):
        assert float(pooled(cases[name]["truth"], "entropy_norm").max()) < 0.97
        assert math.isfinite(cases[name]["loss"])


def test_the_nnsight_backend_routes_the_same_inputs_to_the_same_verdicts(cases, reports) -> None:
    for name in ("collapsed", "reset"):
        traced = run(str(cases[name]["folder"]), RunOptions(command="routing", seed=0, backend="nnsight")).report
        assert set(traced["routing"]["inputs"]) == set(KINDS)

        def verdicts(report: dict) -> dict:
            return {(f["check"], f["where"].get("layer")): f["status"] for f in report["findings"]
                    if f["analyzer"] == "routing_collapse"}  # fmt: skip

        assert verdicts(traced) == verdicts(reports[name])
