"""routing_collapse: MoE layers whose router sends nearly every token to a few experts.

The failure (seed primer): trained without a load-balancing loss, a router can converge on one or
two experts; the model then behaves like a dense model with most parameters idle. It cannot be
fixed at inference; it must be seen before deployment.

Per MoE layer, with load share f_i (fraction of token-slots routed to expert i; fair share 1/E)
and importance P_i (mean router probability):

* ``dead_experts``: experts receiving under ``dead_share`` of their fair share;
* ``max_load_violation``: max_i f_i / (1/E) - 1 (0 = perfectly even; Switch Transformer drops
  tokens past capacity factor 1 + violation);
* ``load_cv``: coefficient of variation of the load;
* ``router_entropy_norm``: mean router entropy / log E;
* ``balance_loss``: the Switch auxiliary loss E * sum_i f_i P_i (1 when balanced, up to E when
  collapsed onto one expert).

Routers are judged on what they select: f_i counts the experts actually chosen, so DeepSeek V3's
selection-only bias (auxiliary-loss-free balancing) counts; for a sigmoid router P_i is its
sigmoid scores normalised per token (see :mod:`workbench.recorders.routing`).
"""

from __future__ import annotations

from typing import Any

import torch

from workbench.analyzers import merged_thresholds
from workbench.findings import Finding, Where
from workbench.recorders.routing import LayerRouting, RoutingRecord

NAME = "routing_collapse"



def thresholds_from(profile_values: dict[str, Any] | None) -> dict[str, float]:
    return merged_thresholds(NAME, profile_values)


def layer_metrics(state: LayerRouting, dead_share: float) -> dict[str, Any]:
    E = state.n_experts
    share = state.load_share
    fair = 1.0 / E
    importance = state.importance.double()
    dead = [e for e in range(E) if float(share[e]) < dead_share * fair]
    return {
        "load_share": [round(float(x), 6) for x in share],
        "dead_experts": dead,
        "max_load_violation": float(share.max() / fair - 1),
        "load_cv": float(share.std(unbiased=False) / share.mean()),
        "router_entropy_norm": state.entropy_norm,
        "balance_loss": float(E * (share * importance).sum()),
        "top_expert": int(torch.argmax(share)),
    }


def analyze(record: RoutingRecord | None, thresholds: dict[str, Any] | None = None,
            *, is_moe: bool = True) -> list[Finding]:
    """Findings per MoE layer of a routing record."""
    if not is_moe:
        return [Finding(NAME, "moe", "skip", "the model has no mixture-of-experts layers")]
    if record is None or not record.layers:
        return [Finding(NAME, "recorded", "skip", "routing was not recorded")]
    t = thresholds_from(thresholds)
    findings: list[Finding] = []
    for layer, state in sorted(record.layers.items()):
        if state.tokens == 0:
            continue
        findings.extend(_layer_findings(layer, state, t))
    return findings


def _layer_findings(layer: int, state: LayerRouting, t: dict[str, float]) -> list[Finding]:
    m = layer_metrics(state, t["dead_share"])
    E, dead = state.n_experts, m["dead_experts"]
    details = {k: v for k, v in m.items()}
    top = m["top_expert"]
    top_share = m["load_share"][top]
    fix = ("Routing collapse is fixed in training, not at inference: add an auxiliary "
           "load-balancing loss (Switch: E * sum f_i P_i, weight ~1e-2), router z-loss, or expert "
           "capacity limits, and retrain or fine-tune the router; evaluate expert load before deploying.")
    findings = []
    dead_fraction = len(dead) / E
    if dead:
        status = "fail" if dead_fraction >= t["max_dead_fraction"] else "warn"
        findings.append(Finding(
            NAME, "dead_experts", status,
            f"layer {layer}: {len(dead)} of {E} experts get under {t['dead_share']:.0%} of their fair "
            f"share of tokens (experts {', '.join(map(str, dead[:8]))}{'...' if len(dead) > 8 else ''}); "
            f"expert {top} takes {top_share:.0%} of token-slots.",
            where=Where(layer=layer, expert=top, sublayer="moe"), metric="dead_expert_fraction",
            value=round(dead_fraction, 4), threshold=t["max_dead_fraction"], fix=fix, details=details,
        ))
    else:
        findings.append(Finding(
            NAME, "dead_experts", "pass", f"layer {layer}: every expert gets tokens",
            where=Where(layer=layer, sublayer="moe"), metric="dead_expert_fraction", value=0.0,
            threshold=t["max_dead_fraction"], details=details,
        ))
    violation = m["max_load_violation"]
    findings.append(Finding(
        NAME, "max_load_violation", "warn" if violation > t["max_load_violation"] else "pass",
        f"layer {layer}: the busiest expert ({top}) gets {violation + 1:.2f}x its fair share "
        f"(load CV {m['load_cv']:.2f}).",
        where=Where(layer=layer, expert=top, sublayer="moe"), metric="max_load_violation",
        value=round(violation, 4), threshold=t["max_load_violation"],
        fix=fix if violation > t["max_load_violation"] else None, details=details,
    ))
    balance = m["balance_loss"]
    findings.append(Finding(
        NAME, "balance_loss", "warn" if balance > t["max_balance_loss"] else "pass",
        f"layer {layer}: Switch balance loss E*sum(f*P) = {balance:.2f} (1.0 is perfectly balanced, "
        f"{E} is everything on one expert); router entropy {m['router_entropy_norm']:.2f} of maximum.",
        where=Where(layer=layer, sublayer="moe"), metric="balance_loss", value=round(balance, 4),
        threshold=t["max_balance_loss"], fix=fix if balance > t["max_balance_loss"] else None,
        details=details,
    ))
    return findings
