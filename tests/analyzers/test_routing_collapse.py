"""Tests of the routing_collapse analyzer on routers built from logits (fast, no model).

Each case routes seeded router logits through the recorder's own ``accumulate`` (top-k of the
softmax, as the decoder does) and checks the verdict and its location. The sample-size rule is
checked against torch's Binomial distribution.
"""

from __future__ import annotations

import math

import pytest
import torch

from workbench.analyzers import routing_collapse
from workbench.recorders.routing import LayerRouting, RoutingRecord, accumulate, combine

KINDS = ("natural", "structured", "repeated", "random")


def route(logits_NE: torch.Tensor, top_k: int, layer: int = 0) -> LayerRouting:
    """One layer's routing record of these logits (N tokens, E experts)."""
    E = logits_NE.shape[-1]
    state = LayerRouting(layer, E, top_k)
    weights, indices = torch.softmax(logits_NE, -1).topk(top_k, dim=-1)
    accumulate(state, logits_NE[None], indices[None], weights[None], samples=4)
    return state


def record_of(states: dict[str, LayerRouting]) -> RoutingRecord:
    """A record over several input kinds, as the pipeline builds it."""
    return combine({kind: RoutingRecord({state.layer: state}) for kind, state in states.items()})


def by_check(findings, check: str):
    return next(f for f in findings if f.check == check)


def statuses(findings) -> set[str]:
    return {f.status for f in findings}


@pytest.mark.parametrize("n_experts", [64, 128, 256])
@pytest.mark.parametrize("top_k", [1, 2, 8])
def test_a_uniform_router_passes_at_many_experts_with_the_default_probe(n_experts: int, top_k: int) -> None:
    # confident per token (logit std 4), uniform over experts: four 512-token inputs, as the
    # pipeline routes with the default profile
    generator = torch.Generator().manual_seed(n_experts + top_k)
    states = {kind: route(4 * torch.randn(512, n_experts, generator=generator), top_k) for kind in KINDS}
    findings = routing_collapse.analyze(record_of(states))
    assert not statuses(findings) & {"fail", "warn"}, [f.message for f in findings if f.status != "pass"]


@pytest.mark.parametrize("n_experts", [8, 64, 256])
def test_a_five_token_prompt_never_fails_a_uniform_router(n_experts: int) -> None:
    generator = torch.Generator().manual_seed(5)
    state = route(4 * torch.randn(5, n_experts, generator=generator), top_k=2)
    findings = routing_collapse.analyze(RoutingRecord({0: state}))
    assert not statuses(findings) & {"fail", "warn"}
    dead = by_check(findings, "dead_experts")
    assert dead.status == "skip" and "too few" in dead.message


def test_top2_collapse_fails_on_first_choice_though_slot_shares_look_fair() -> None:
    # expert 0 first for every token; the second choice spreads over experts 1-3
    generator = torch.Generator().manual_seed(0)
    logits_NE = torch.randn(2048, 4, generator=generator)
    logits_NE[:, 0] += 6.0
    state = route(logits_NE, top_k=2)
    findings = routing_collapse.analyze(RoutingRecord({0: state}))
    first = by_check(findings, "first_choice")
    assert first.status == "fail" and (first.where.layer, first.where.expert) == (0, 0)
    assert first.value == pytest.approx(1.0, abs=0.01)
    # what slot shares alone said: nobody dead, busiest expert at exactly 2x its fair share
    assert by_check(findings, "dead_experts").status == "pass"
    assert by_check(findings, "max_load_violation").status == "pass"
    assert by_check(findings, "router_entropy").status == "pass"


def test_a_balanced_top2_router_passes_first_choice() -> None:
    generator = torch.Generator().manual_seed(1)
    state = route(3 * torch.randn(2048, 4, generator=generator), top_k=2)
    findings = routing_collapse.analyze(RoutingRecord({0: state}))
    assert statuses(findings) == {"pass"}


def test_a_near_uniform_router_fails_entropy_and_its_balance_proves_nothing() -> None:
    # a re-initialised router: logits of std 0.05, so probabilities within a few % of 1/E
    generator = torch.Generator().manual_seed(2)
    state = route(0.05 * torch.randn(2048, 8, generator=generator), top_k=2)
    findings = routing_collapse.analyze(RoutingRecord({0: state}))
    entropy = by_check(findings, "router_entropy")
    assert entropy.status == "fail" and entropy.value > 0.99
    balance = by_check(findings, "balance_loss")
    assert balance.status == "skip" and balance.value == pytest.approx(1.0, abs=0.02)
    assert by_check(findings, "first_choice").status == "skip"


def test_domain_experts_are_not_dead_but_an_expert_dead_on_every_input_is() -> None:
    # 8 experts, top-2: prose goes to experts 0-3 only, code to experts 4-7 only; expert 7 never
    generator = torch.Generator().manual_seed(3)

    def domain(experts: list[int]) -> LayerRouting:
        logits_NE = torch.full((1024, 8), -20.0)
        logits_NE[:, experts] = 3 * torch.randn(1024, len(experts), generator=generator)
        return route(logits_NE, top_k=2)

    healthy = record_of({"natural": domain([0, 1, 2, 3]), "structured": domain([4, 5, 6, 7])})
    findings = routing_collapse.analyze(healthy)
    assert by_check(findings, "dead_experts").status == "pass"
    assert not statuses(findings) & {"fail", "warn"}
    # the same prose routing judged alone: experts 4-7 dead, named in `where`
    alone = routing_collapse.analyze(RoutingRecord({0: domain([0, 1, 2, 3])}))
    dead = by_check(alone, "dead_experts")
    assert dead.status == "fail" and dead.where.experts == (4, 5, 6, 7) and dead.where.expert is None
    broken = record_of({"natural": domain([0, 1, 2, 3]), "structured": domain([4, 5, 6])})
    dead = by_check(routing_collapse.analyze(broken), "dead_experts")
    assert dead.status == "warn" and dead.where.experts == (7,)  # 1 of 8: under a quarter


def test_binomial_tails_match_torch() -> None:
    for n, p, count in [(512, 2 / 64, 1), (2048, 1 / 256, 0), (100, 0.3, 12), (5, 2 / 64, 0)]:
        pmf = torch.distributions.Binomial(n, torch.tensor(p, dtype=torch.float64)).log_prob(
            torch.arange(n + 1, dtype=torch.float64)).exp()
        expected_le = float(pmf[: count + 1].sum())
        got = routing_collapse.binomial_le(n, p, count)
        assert got == pytest.approx(expected_le, rel=1e-6) if count < n * p else got == 1.0
    for n, p, count in [(512, 1 / 4, 200), (5, 1 / 8, 3), (2048, 2 / 64, 100)]:
        pmf = torch.distributions.Binomial(n, torch.tensor(p, dtype=torch.float64)).log_prob(
            torch.arange(n + 1, dtype=torch.float64)).exp()
        assert routing_collapse.binomial_ge(n, p, count) == pytest.approx(float(pmf[count:].sum()), rel=1e-6)


def test_tokens_to_tell_dead_is_where_the_uniform_test_starts_to_judge() -> None:
    t = routing_collapse.thresholds_from(None)
    for E, k in [(8, 2), (64, 2), (256, 1)]:
        need = routing_collapse.tokens_to_tell_dead(E, k, t["dead_share"], t["significance"])
        fair = k / E
        chance = E * routing_collapse.binomial_le(need, fair, t["dead_share"] * fair * need - 1e-9)
        before = E * routing_collapse.binomial_le(need // 2, fair, t["dead_share"] * fair * (need // 2) - 1e-9)
        assert chance < t["significance"] <= before
        # a uniform router covers each expert about N k / E times: a handful is never enough
        assert need * fair > math.log(E)


def test_the_recorder_counts_first_choices_and_combine_pools_inputs() -> None:
    generator = torch.Generator().manual_seed(4)
    logits = {kind: torch.randn(300, 6, generator=generator) for kind in ("natural", "random")}
    states = {kind: route(value, top_k=2) for kind, value in logits.items()}
    for kind, state in states.items():
        assert state.first.tolist() == torch.bincount(logits[kind].argmax(-1), minlength=6).tolist()
        assert int(state.first.sum()) == 300 and int(state.load.sum()) == 600
    pooled = record_of(states)
    layer = pooled.layers[0]
    assert layer.tokens == 600
    assert torch.equal(layer.first, states["natural"].first + states["random"].first)
    assert torch.equal(layer.coselect, states["natural"].coselect + states["random"].coselect)
    assert layer.entropy_sum == pytest.approx(states["natural"].entropy_sum + states["random"].entropy_sum)
    assert set(pooled.by_input) == {"natural", "random"}
    document = pooled.to_dict()
    assert document["inputs"]["random"]["tokens"] == 300
    assert document["inputs"]["random"]["layers"][0]["first_choice"] == states["random"].first.tolist()
    assert combine({"natural": RoutingRecord({0: states["natural"]})}).by_input == {}  # one input: no split
    assert combine({}) is None


def test_a_uniform_router_in_a_model_at_chance_is_untrained_not_a_lost_gate() -> None:
    # the same near-uniform router: a trained model (loss well below log V) fails, a model whose
    # loss sits at chance (freshly initialised: every part is untrained) gets a skip that says so
    generator = torch.Generator().manual_seed(2)
    record = RoutingRecord({0: route(0.05 * torch.randn(2048, 8, generator=generator), top_k=2)})
    vocab = 1000
    trained = routing_collapse.analyze(record, loss_nats=3.0, vocab_size=vocab)
    assert by_check(trained, "router_entropy").status == "fail"
    at_chance = routing_collapse.analyze(record, loss_nats=math.log(vocab) - 0.05, vocab_size=vocab)
    entropy = by_check(at_chance, "router_entropy")
    assert entropy.status == "skip" and "at chance" in entropy.message and entropy.fix is None
