"""attention_saturation: heads whose attention has collapsed onto single content tokens.

The failure (seed primer, "Common Failure Cases"): attention without the 1/sqrt(d_head) scale has
q.k logits about sqrt(d_head) times too large, so the softmax is near one-hot everywhere; loss
stalls and gradients vanish. Two things look alike and are told apart here:

* a **sink** head puts most of its weight on the first token (a learned no-op, seen in every
  large trained model, Xiao et al. 2023 "StreamingLLM"): reported as ``info``;
* a **saturated** head is one-hot on *content* tokens at most positions.

A single saturated head can be a legitimate sharp head (previous-token, induction): ``warn``.
A layer where at least ``layer_fraction`` of the heads are saturated is the systemic pathology:
``fail``. The logit scale (standard deviation of the pre-softmax logits over visible keys) is
compared with ``max_logit_std``; it says *why* (an unscaled layer's logits are ~sqrt(d_head) times
wider than a scaled one's).

Positions before ``skip_positions`` see few keys and are left out of every mean.

Family mechanisms are judged as the softmax sees them: a soft-capped model's (Gemma 2) logits
and their std are the capped ones, which can never exceed the cap, and the findings say so; with
QK-norm (Qwen3) each q and k head is RMS-normalised, so the logit width is set by the norm weights
and the scale, not by the projections' growth, and the fix points there.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from workbench.analyzers import merged_thresholds
from workbench.findings import Finding, Where
from workbench.recorders.attention import AttentionRecord

NAME = "attention_saturation"



def thresholds_from(profile_values: dict[str, Any] | None) -> dict[str, float]:
    return merged_thresholds(NAME, profile_values)


def head_metrics(record: AttentionRecord, onehot_prob: float, skip: int) -> dict[str, torch.Tensor]:
    """``[layers, heads]`` means over query positions ``>= skip``."""
    s = slice(skip, None)
    max_prob, sink = record.stats["max_prob"][:, :, s], record.stats["sink_mass"][:, :, s]
    content_onehot = (max_prob > onehot_prob) & (sink < max_prob)  # the top key is not the sink
    means = {stat: record.head_summary(stat, skip) for stat in ("entropy_norm", "max_prob", "sink_mass", "logit_std")}
    return {**means, "onehot_fraction": content_onehot.float().mean(dim=-1)}


def analyze(record: AttentionRecord | None, thresholds: dict[str, Any] | None = None) -> list[Finding]:
    """Findings for every layer (and the heads that stand out) of one attention record."""
    if record is None:
        return [Finding(NAME, "recorded", "skip", "attention was not recorded")]
    t = thresholds_from(thresholds)
    skip = int(t["skip_positions"])
    if record.n_tokens <= skip + 1:
        return [Finding(NAME, "recorded", "skip",
                        f"the probe has {record.n_tokens} tokens; saturation needs more than {skip + 1}")]
    metrics = head_metrics(record, t["onehot_prob"], skip)
    if bool(torch.isnan(metrics["entropy_norm"]).all()):
        return [Finding(NAME, "recorded", "skip", "attention statistics are not finite (see nonfinite)")]
    findings: list[Finding] = []
    for layer in range(record.n_layers):
        findings.extend(_layer_findings(record, metrics, layer, t))
    return findings


def _details(metrics: dict[str, torch.Tensor], layer: int, head: int) -> dict[str, float]:
    return {name: round(float(value[layer, head]), 4) for name, value in metrics.items()}


def _layer_findings(record: AttentionRecord, metrics, layer: int, t: dict[str, float]) -> list[Finding]:
    findings = []
    heads = range(record.n_heads)
    sinks = [h for h in heads if metrics["sink_mass"][layer, h] >= t["sink_mass"]]
    saturated = [h for h in heads if h not in sinks and metrics["onehot_fraction"][layer, h] >= t["saturated_fraction"]]
    logit_std = float(torch.nanmedian(metrics["logit_std"][layer]))
    expected_factor = math.sqrt(record.d_head)
    softcap, qk_norm = getattr(record, "softcap", None), getattr(record, "qk_norm", False)
    seen = f" (scores after the model's soft-cap at {softcap:g}, as the softmax sees them)" if softcap else ""
    if sinks:
        strongest = max(sinks, key=lambda h: float(metrics["sink_mass"][layer, h]))
        masses = ", ".join(f"H{h} {float(metrics['sink_mass'][layer, h]):.0%}" for h in sinks)
        findings.append(Finding(
            NAME, "sink_heads", "info",
            f"layer {layer}: {len(sinks)} attention sink head{'s' if len(sinks) > 1 else ''} "
            f"({masses} of weight on the first token). Trained models use sinks as a no-op; "
            "this is not saturation.",
            where=Where(layer=layer, head=strongest), metric="sink_mass",
            value=round(float(metrics["sink_mass"][layer, strongest]), 4), threshold=t["sink_mass"],
            details={"sink_heads": sinks, **_details(metrics, layer, strongest)},
        ))
    share = len(saturated) / record.n_heads
    if share >= t["layer_fraction"]:
        worst = max(saturated, key=lambda h: float(metrics["onehot_fraction"][layer, h]))
        scale_note = (
            f" Its logits are wide (median std {logit_std:.1f} > {t['max_logit_std']:g}), as they are "
            f"when q.k is not divided by sqrt(d_head) = {expected_factor:.1f}."
            if logit_std > t["max_logit_std"] else ""
        )
        findings.append(Finding(
            NAME, "saturated_layer", "fail",
            f"layer {layer}: {len(saturated)} of {record.n_heads} heads attend one-hot to content "
            f"tokens (head {worst} at {float(metrics['onehot_fraction'][layer, worst]):.0%} of positions)."
            + scale_note + seen,
            where=Where(layer=layer, head=worst, sublayer="attn"), metric="saturated_head_fraction",
            value=round(share, 4), threshold=t["layer_fraction"],
            fix=(
                "The model uses QK-norm, so q.k is bounded by the q_norm/k_norm weights times the "
                f"scale {record.scale:.3g}: check those weights and attn_scale; if they are right, lower "
                "the learning rate, and unit-test attention entropy on random inputs."
                if qk_norm else
                "Scale attention logits by 1/sqrt(d_head) before the softmax (check custom attention "
                "code and attn_scale in the config); if the scale is right, lower the learning rate "
                "or add QK-norm, and unit-test attention entropy on random inputs."
            ),
            details={"saturated_heads": saturated, "median_logit_std": round(logit_std, 4),
                     **_details(metrics, layer, worst)},
        ))
    else:
        for head in saturated:
            findings.append(Finding(
                NAME, "saturated_head", "warn",
                f"layer {layer} head {head} is one-hot on content tokens at "
                f"{float(metrics['onehot_fraction'][layer, head]):.0%} of positions. Previous-token "
                "and induction heads can be this sharp; a lone head is worth a look, not an alarm.",
                where=Where(layer=layer, head=head, sublayer="attn"), metric="onehot_fraction",
                value=round(float(metrics["onehot_fraction"][layer, head]), 4),
                threshold=t["saturated_fraction"],
                fix="Open its pattern in the report's viewer: a diagonal stripe one below the main "
                    "diagonal is a previous-token head (healthy).",
                details=_details(metrics, layer, head),
            ))
        if not saturated:
            findings.append(Finding(
                NAME, "saturated_layer", "pass",
                f"layer {layer}: no head is one-hot on content tokens "
                f"(most one-hot: {float(metrics['onehot_fraction'][layer].max()):.0%} of positions)" + seen,
                where=Where(layer=layer, sublayer="attn"), metric="saturated_head_fraction",
                value=0.0, threshold=t["layer_fraction"],
            ))
    if logit_std > t["max_logit_std"]:
        findings.append(Finding(
            NAME, "logit_scale", "warn",
            f"layer {layer}: pre-softmax logits have median std {logit_std:.1f} across heads{seen}; "
            f"with 1/sqrt(d_head) scaling trained models stay near 1-6. Logits this wide push the "
            "softmax towards one-hot.",
            where=Where(layer=layer, sublayer="attn"), metric="median_logit_std",
            value=round(logit_std, 4), threshold=t["max_logit_std"],
            fix=(f"With QK-norm the width comes from the q_norm/k_norm weights and the scale "
                 f"{record.scale:.3g}: check those weights." if qk_norm else
                 f"Check that q.k is multiplied by 1/sqrt(d_head) = {1 / expected_factor:.3f} "
                 f"(the model uses {record.scale:.3g})."),
        ))
    return findings
