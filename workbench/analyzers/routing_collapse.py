"""routing_collapse: MoE routers that collapse onto a few experts, leave experts dead, or never
learned to route.

The failure (seed primer): trained without a load-balancing loss, a router can converge on one or
two experts; the model then behaves like a dense model with most parameters idle. It cannot be
fixed at inference; it must be seen before deployment. A conversion that lost the gate weights
leaves a re-initialised router: near-uniform probabilities, experts picked by noise.

Per MoE layer, from counts pooled over every input kind the pipeline routed (natural text,
structured text, repeated blocks, random ids), N tokens, E experts, k chosen per token:

* ``router_entropy``: mean router entropy / log E. Near 1 (``max_router_entropy``) the router is
  untrained or re-initialised; then balance numbers prove nothing (uniform noise balances);
* ``first_choice``: the share of tokens whose first choice (the chosen expert with the largest
  weight) is the busiest expert,
  as the fraction of the way from the fair share 1/E to 1 (``collapse_excess``). Top-k aware:
  under top-2 an expert chosen first by every token still holds only half the slots, so slot
  shares alone miss the collapse;
* ``dead_experts``: experts whose per-token coverage (tokens that chose them among their k) is
  under ``dead_share`` of the fair coverage k/E on *every* input kind: an expert that serves only
  code is a domain expert, not a dead one;
* ``max_load_violation``: busiest expert's slot share / (1/E) - 1 (capacity overflow);
* ``balance_loss``: the Switch auxiliary loss E * sum_i f_i P_i over slots.

Sample size: a dead-expert, overload or collapse verdict needs counts a uniform router would give
with probability under ``significance`` (Bonferroni over the E experts) at that N, E and k; with
fewer tokens the check is skipped, saying how many tokens would tell. Tokens are treated as
independent draws (positions of one text are not, so the test is a floor, not an exact level).

Routers are judged on what they select: load, coverage and first choices count the experts
actually chosen, so DeepSeek V3's selection-only bias (auxiliary-loss-free balancing) counts; for
a sigmoid router P_i is its sigmoid scores normalised per token (see
:mod:`workbench.recorders.routing`). A sigmoid router scores each expert on its own, so those
normalised scores are no distribution whose entropy says "untrained": ``router_entropy`` is a
``skip`` for it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from workbench.analyzers import at_chance, merged_thresholds
from workbench.findings import Finding, Where
from workbench.recorders.routing import LayerRouting, RoutingRecord
from workbench.units import plural

NAME = "routing_collapse"

# Thresholds (values and sources) are written once, in profiles/default.toml [thresholds.routing_collapse].

# The details every finding carries, and the per-expert numbers only the check that judges them keeps.
SHARED_DETAILS = ["tokens", "inputs", "router_entropy_norm"]
CHECK_DETAILS: dict[str, list[str]] = {
    "router_entropy": [],
    "first_choice": ["first_choice_share", "top_first_expert", "first_choice_excess"],
    "dead_experts": ["coverage", "coverage_by_input", "dead_experts"],
    "max_load_violation": ["load_share", "top_expert", "max_load_violation", "load_cv"],
    "balance_loss": ["balance_loss"],
}

FIX_COLLAPSE = (
    "Routing collapse is fixed in training, not at inference: add an auxiliary load-balancing loss "
    "that counts first choices (Switch: E * sum f_i P_i, weight ~1e-2), router z-loss, or expert "
    "capacity limits, and retrain or fine-tune the router; evaluate expert load before deploying."
)
FIX_UNTRAINED = (
    "The router looks untrained: check that the checkpoint's gate/router tensors were loaded (a "
    "conversion that drops them leaves a freshly initialised router); reconvert from the original."
)


def thresholds_from(profile_values: dict[str, Any] | None) -> dict[str, float]:
    return merged_thresholds(NAME, profile_values)


def _binomial_tail(n: int, p: float, counts: range) -> float:
    """Sum of the Binomial(n, p) probabilities of ``counts``, walked away from the mean (terms
    shrink, so the walk stops once they no longer add anything)."""
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in counts:
        term = math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p
                        + (n - i) * log_q)  # fmt: skip
        total += term
        if term < 1e-18 * total:
            break
    return min(total, 1.0)


def binomial_le(n: int, p: float, count: float) -> float:
    """P(X <= count) for X ~ Binomial(n, p); 1.0 when count is at or above the mean (no evidence)."""
    c = math.floor(count)
    if c < 0:
        return 0.0
    if c >= n * p or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return _binomial_tail(n, p, range(c, -1, -1))


def binomial_ge(n: int, p: float, count: float) -> float:
    """P(X >= count) for X ~ Binomial(n, p); 1.0 when count is at or below the mean."""
    c = math.ceil(count)
    if c > n:
        return 0.0
    if c <= n * p or p >= 1.0:
        return 1.0
    if p <= 0.0:
        return 0.0
    return _binomial_tail(n, p, range(c, n + 1))


def uniform_dead_chance(n_tokens: int, n_experts: int, top_k: int, dead_share: float) -> float:
    """How likely a uniform router leaves some expert under ``dead_share`` of its fair coverage at
    ``n_tokens`` (a Bonferroni bound over the experts): the dead-expert and balance verdicts need
    it under the profile's ``significance``."""
    fair = top_k / n_experts
    return n_experts * binomial_le(n_tokens, fair, dead_share * fair * n_tokens - 1e-9)


def tokens_to_tell_dead(n_experts: int, top_k: int, dead_share: float, significance: float) -> int:
    """The fewest tokens at which a uniform router leaves no expert under the dead threshold
    (with probability ``1 - significance``)."""
    n = 1
    while n < 10**7:
        if uniform_dead_chance(n, n_experts, top_k, dead_share) < significance:
            return n
        n *= 2
    return n


def layer_metrics(state: LayerRouting, by_input: dict[str, LayerRouting], t: dict[str, float]) -> dict[str, Any]:
    """The numbers the checks judge, for one layer (see the module docstring)."""
    E, k, N = state.n_experts, state.top_k, state.tokens
    slot_share = state.load_share
    coverage = state.coselect.diagonal().double() / max(N, 1)  # (E,) fraction of tokens using e
    first = state.first.double() / max(N, 1)  # (E,)
    fair_coverage = k / E
    kinds = by_input or {"all": state}
    coverage_by_kind = {
        kind: (s.coselect.diagonal().double() / max(s.tokens, 1)) for kind, s in kinds.items() if s.tokens
    }
    dead = [e for e in range(E) if all(float(c[e]) < t["dead_share"] * fair_coverage
                                       for c in coverage_by_kind.values())]  # fmt: skip
    top_first = int(torch.argmax(first))
    fair_first = 1.0 / E
    return {
        "tokens": N,
        "top_k": k,
        "inputs": {kind: s.tokens for kind, s in kinds.items()},
        "load_share": [round(float(x), 6) for x in slot_share],
        "coverage": [round(float(x), 6) for x in coverage],
        "first_choice_share": [round(float(x), 6) for x in first],
        "coverage_by_input": {kind: [round(float(x), 4) for x in c] for kind, c in coverage_by_kind.items()},
        "dead_experts": dead,
        "max_load_violation": float(slot_share.max() * E - 1),
        "load_cv": float(slot_share.std(unbiased=False) / slot_share.mean()),
        "router_entropy_norm": state.entropy_norm,
        "balance_loss": float(E * (slot_share * state.importance.double()).sum()),
        "top_expert": int(torch.argmax(slot_share)),
        "top_first_expert": top_first,
        "first_choice_excess": float((first[top_first] - fair_first) / (1 - fair_first)) if E > 1 else 0.0,
    }


def analyze(record: RoutingRecord | None, thresholds: dict[str, Any] | None = None,
            *, is_moe: bool = True, loss_nats: float | None = None,
            vocab_size: int | None = None) -> list[Finding]:
    """Findings per MoE layer of a routing record (pooled over its inputs).

    ``loss_nats`` (the probe's mean loss) and ``vocab_size``: a model whose loss sits at chance
    (log V) is untrained as a whole, so its uniform router is no lost gate: ``router_entropy`` is
    then a skip that says so."""
    if not is_moe:
        return [Finding(NAME, "moe", "skip", "the model has no mixture-of-experts layers")]
    if record is None or not record.layers:
        return [Finding(NAME, "recorded", "skip", "routing was not recorded")]
    t = thresholds_from(thresholds)
    findings: list[Finding] = []
    for layer, state in sorted(record.layers.items()):
        if state.tokens == 0 or state.n_experts < 2:
            continue
        by_input = {kind: layers[layer] for kind, layers in record.by_input.items() if layer in layers}
        findings.extend(_layer_findings(layer, state, by_input, t, loss_nats, vocab_size))
    return findings


def _layer_findings(layer: int, state: LayerRouting, by_input: dict[str, LayerRouting],
                    t: dict[str, float], loss_nats: float | None = None,
                    vocab_size: int | None = None) -> list[Finding]:
    m = layer_metrics(state, by_input, t)
    E, k, N = state.n_experts, state.top_k, state.tokens
    where = Where(layer=layer, sublayer="moe")
    sigmoid = state.score == "sigmoid"
    untrained = not sigmoid and m["router_entropy_norm"] >= t["max_router_entropy"]
    model_at_chance = at_chance(loss_nats, vocab_size, t["chance_margin"])
    inputs = ", ".join(f"{kind} {n}" for kind, n in m["inputs"].items())
    tokens = f"{plural(N, 'token')} ({inputs})"

    def finding(check: str, status: str, message: str, **extra: Any) -> Finding:
        # each check keeps the per-expert numbers it judged (report.json stays small at many experts)
        details = {key: m[key] for key in SHARED_DETAILS + CHECK_DETAILS[check]}
        return Finding(NAME, check, status, f"layer {layer}: {message}", details=details, **extra)  # type: ignore[arg-type]

    if sigmoid:
        entropy_status, entropy_message = "skip", (
            f"router entropy {m['router_entropy_norm']:.2f} of log {E} not judged: a sigmoid router scores "
            "each expert on its own")
    elif untrained and model_at_chance:
        entropy_status, entropy_message = "skip", (
            f"router entropy is {m['router_entropy_norm']:.3f} of log {E}, but the model's loss on the probe "
            f"({loss_nats:.2f} nats) is at chance (log V = {math.log(vocab_size):.2f}): an untrained model routes "
            "uniformly; nothing to judge")
    elif untrained:
        entropy_status, entropy_message = "fail", (
            f"router entropy is {m['router_entropy_norm']:.3f} of log {E}: probabilities are near-uniform, "
            "the router is untrained or was re-initialised (e.g. a conversion lost the gate weights); "
            "experts are picked by noise")
    else:
        entropy_status, entropy_message = "pass", f"router entropy {m['router_entropy_norm']:.2f} of log {E}"
    out = [finding("router_entropy", entropy_status, entropy_message, where=where, metric="router_entropy_norm",
                   value=round(m["router_entropy_norm"], 4), threshold=t["max_router_entropy"],
                   fix=FIX_UNTRAINED if entropy_status == "fail" else None)]
    out.append(_first_choice(m, E, N, t, untrained, tokens, finding, layer))
    too_few = uniform_dead_chance(N, E, k, t["dead_share"]) >= t["significance"]
    out.append(_dead(m, E, k, too_few, t, tokens, finding, layer))
    out.append(_overload(m, E, k, N, t, tokens, finding, layer))
    balance = m["balance_loss"]
    if too_few:
        out.append(finding("balance_loss", "skip", f"balance loss {balance:.2f} on {tokens}: too few to tell "
                           "(a uniform router's is as far from 1 at this many tokens)", where=where,
                           metric="balance_loss", value=round(balance, 4), threshold=t["max_balance_loss"]))
    elif untrained:
        out.append(finding("balance_loss", "skip",
                           f"balance loss {balance:.2f} proves nothing: router probabilities are near-uniform",
                           where=where, metric="balance_loss", value=round(balance, 4),
                           threshold=t["max_balance_loss"]))  # fmt: skip
    else:
        bad = balance > t["max_balance_loss"]
        out.append(finding(
            "balance_loss", "warn" if bad else "pass",
            f"Switch balance loss E*sum(f*P) = {balance:.2f} over slots (1.0 is balanced, {E} is "
            "everything on one expert).", where=where, metric="balance_loss", value=round(balance, 4),
            threshold=t["max_balance_loss"], fix=FIX_COLLAPSE if bad else None,
        ))  # fmt: skip
    return out


def _first_choice(m, E, N, t, untrained, tokens, finding, layer) -> Finding:
    top = m["top_first_expert"]
    share = m["first_choice_share"][top]
    excess = m["first_choice_excess"]
    where = Where(layer=layer, expert=top, sublayer="moe")
    common = dict(where=where, metric="first_choice_excess", value=round(excess, 4), threshold=t["collapse_excess"])
    said = f"expert {top} is the first choice of {share:.0%} of {tokens} (fair {1 / E:.0%})"
    if untrained:
        return finding("first_choice", "skip", f"{said}; with near-uniform router probabilities this is "
                       "noise, not learned collapse (see router_entropy)", **common)  # fmt: skip
    if excess <= t["collapse_excess"]:
        return finding("first_choice", "pass", said, **common)
    chance = E * binomial_ge(N, 1.0 / E, share * N - 1e-9)
    if chance >= t["significance"]:
        return finding("first_choice", "skip", f"{said}, but a uniform router does that with probability "
                       f"{min(chance, 1.0):.2g} at this many tokens: too few to tell", **common)  # fmt: skip
    rest = ("the others share what is left" if m["top_k"] == 1 else
            "the others are mostly picked second, at the smaller weight")
    return finding("first_choice", "fail", f"{said}: routing collapsed onto one expert ({rest})",
                   fix=FIX_COLLAPSE, **common)  # fmt: skip


def _dead(m, E, k, too_few, t, tokens, finding, layer) -> Finding:
    dead = m["dead_experts"]
    fraction = len(dead) / E
    fair = k / E
    common = dict(metric="dead_expert_fraction", value=round(fraction, 4), threshold=t["max_dead_fraction"])
    if too_few:
        need = tokens_to_tell_dead(E, k, t["dead_share"], t["significance"])
        return finding("dead_experts", "skip", f"{tokens} are too few to tell a dead expert from chance with "
                       f"{E} experts, top-{k} (a uniform router would leave some under {t['dead_share']:.0%} "
                       f"of their fair share); about {need:,} tokens would (--tokens)",
                       where=Where(layer=layer, sublayer="moe"), **common)  # fmt: skip
    if not dead:
        return finding("dead_experts", "pass", f"every expert gets tokens on {tokens}",
                       where=Where(layer=layer, sublayer="moe"), **common)
    kinds = "every input kind" if len(m["inputs"]) > 1 else "the one input routed"
    shown = ", ".join(map(str, dead[:8])) + ("..." if len(dead) > 8 else "")
    return finding(
        "dead_experts", "fail" if fraction >= t["max_dead_fraction"] else "warn",
        f"{len(dead)} of {E} experts (experts {shown}) cover under {t['dead_share']:.0%} of their fair share "
        f"of tokens ({fair:.0%}) on {kinds}; {tokens}.",
        where=Where(layer=layer, experts=tuple(dead), sublayer="moe"), fix=FIX_COLLAPSE, **common,
    )  # fmt: skip


def _overload(m, E, k, N, t, tokens, finding, layer) -> Finding:
    top = m["top_expert"]
    violation = m["max_load_violation"]
    where = Where(layer=layer, expert=top, sublayer="moe")
    common = dict(where=where, metric="max_load_violation", value=round(violation, 4),
                  threshold=t["max_load_violation"])  # fmt: skip
    said = (f"the busiest expert ({top}) gets {violation + 1:.2f}x its fair share of slots "
            f"(load CV {m['load_cv']:.2f}) on {tokens}")  # fmt: skip
    if violation <= t["max_load_violation"]:
        return finding("max_load_violation", "pass", said, **common)
    coverage_count = m["coverage"][top] * N
    if E * binomial_ge(N, k / E, coverage_count - 1e-9) >= t["significance"]:
        return finding("max_load_violation", "skip", f"{said}, within what a uniform router gives at this "
                       "many tokens: too few to tell", **common)  # fmt: skip
    return finding("max_load_violation", "warn", said, fix=FIX_COLLAPSE, **common)
