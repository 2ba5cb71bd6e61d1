"""attention_saturation: heads whose attention temperature is broken, judged head by head.

The failure (seed primer, "Common Failure Cases"): attention without the 1/sqrt(d_head) scale has
q.k logits about sqrt(d_head) times too large, so the softmax is near one-hot everywhere; with
1/d_head instead, logits are sqrt(d_head) times too small and every head averages its context.
Either way the loss breaks. Each head is judged on its own logits:

* **runaway** (too sharp): its logits are far wider than any healthy head's (median spread over
  ``max_logit_std`` or median top-two gap over ``max_logit_gap``) *and* its attention has
  collapsed (one-hot at most positions, or normalised entropy under ``collapsed_entropy``). Where the one-hot weight lands does not matter: a runaway head one-hot on the first
  token is saturated too;
* **flat** (too cool): entropy near 1 (``flat_entropy``) with a spread below ``min_logit_std``,
  under what any healthy head shows;
* **sink**: most weight on the first token at a healthy logit scale, a learned no-op
  (Xiao et al. 2023, "StreamingLLM"): ``info``;
* **sharp**: one-hot on content tokens at a healthy logit scale (previous-token, copy, induction
  and local heads): ``info``; sharpness alone is not a defect.

The model's verdict comes from how many heads are broken and where: ``fail`` in every layer that
holds broken heads when they are at least ``broken_head_fraction`` of all heads (a scale bug
applied to some heads of every layer, or to all), or when they are at least ``layer_fraction`` of
one layer's heads; a few broken heads elsewhere are a ``warn``. A model whose attention is flat
because it is untrained (its loss on the probe at chance, ``log V``) is not judged for flatness.

Positions before ``skip_positions`` see few keys and are left out of every statistic.

Family mechanisms are judged as the softmax sees them: a soft-capped model's (Gemma 2) logits
and their spread are the capped ones, which can never exceed the cap, and the findings say so;
with QK-norm (Qwen3) each q and k head is RMS-normalised, so the logit width is set by the norm
weights and the scale, not by the projections' growth, and the fix points there.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from workbench.analyzers import at_chance, merged_thresholds
from workbench.findings import Finding, Where
from workbench.recorders.attention import AttentionRecord
from workbench.units import plural

NAME = "attention_saturation"

_FIX_SHARP = (
    "Scale attention logits by 1/sqrt(d_head) before the softmax (check custom attention code, "
    "attn_scale in the config and any conversion that rescaled W_q or W_k); if the scale is right, "
    "lower the learning rate or add QK-norm, and unit-test attention entropy on random inputs."
)
_FIX_QK_NORM = (
    "The model uses QK-norm, so q.k is bounded by the q_norm/k_norm weights times the scale: check "
    "those weights and attn_scale; if they are right, lower the learning rate, and unit-test "
    "attention entropy on random inputs."
)
_FIX_FLAT = (
    "Scale attention logits by 1/sqrt(d_head), not 1/d_head (check attn_scale, a muP-style scale "
    "applied twice, or a conversion that divided W_q or W_k)."
)


def thresholds_from(profile_values: dict[str, Any] | None) -> dict[str, float]:
    return merged_thresholds(NAME, profile_values)


def head_metrics(record: AttentionRecord, onehot_prob: float, skip: int) -> dict[str, torch.Tensor]:
    """``[layers, heads]`` per-head evidence over query positions ``>= skip``: means of entropy,
    max_prob and sink mass, medians of the logit spread and gap, and how often the head is
    one-hot (on any key, and on a content key)."""
    s = slice(skip, None)
    max_prob, sink = record.stats["max_prob"][:, :, s], record.stats["sink_mass"][:, :, s]
    onehot = max_prob > onehot_prob
    means = {stat: record.head_summary(stat, skip) for stat in ("entropy_norm", "max_prob", "sink_mass")}
    medians = {stat: torch.nanmedian(record.stats[stat][:, :, s], dim=-1).values for stat in ("logit_std", "logit_gap")}
    return {**means, **medians, "onehot_fraction": onehot.float().mean(dim=-1),
            "content_onehot_fraction": (onehot & (sink < max_prob)).float().mean(dim=-1)}


def classify(metrics: dict[str, torch.Tensor], t: dict[str, float]) -> dict[str, torch.Tensor]:
    """Bool ``[layers, heads]`` masks: runaway, flat, sink and sharp heads (see the module doc)."""
    wide = (metrics["logit_std"] > t["max_logit_std"]) | (metrics["logit_gap"] > t["max_logit_gap"])
    collapsed = (metrics["onehot_fraction"] >= t["saturated_fraction"]) | (
        metrics["entropy_norm"] <= t["collapsed_entropy"])
    runaway = wide & collapsed
    flat = (metrics["entropy_norm"] >= t["flat_entropy"]) & (metrics["logit_std"] < t["min_logit_std"])
    sink = ~runaway & (metrics["sink_mass"] >= t["sink_mass"])
    sharp = ~runaway & ~sink & (metrics["content_onehot_fraction"] >= t["saturated_fraction"])
    return {"runaway": runaway, "flat": flat, "sink": sink, "sharp": sharp}


def analyze(
    record: AttentionRecord | None,
    thresholds: dict[str, Any] | None = None,
    *,
    loss_nats: float | None = None,
    vocab_size: int | None = None,
) -> list[Finding]:
    """Findings for every layer (and the heads that stand out) of one attention record.

    ``loss_nats`` (the model's mean loss on the same probe) and ``vocab_size``, when given, tell
    an untrained model (loss at chance, flat attention by nature) from a flat-attention bug."""
    if record is None:
        return [Finding(NAME, "recorded", "skip", "attention was not recorded")]
    t = thresholds_from(thresholds)
    skip = int(t["skip_positions"])
    if record.n_tokens <= skip + 1:
        return [Finding(NAME, "recorded", "skip",
                        f"the probe has {plural(record.n_tokens, 'token')}; saturation needs more than {skip + 1}")]
    metrics = head_metrics(record, t["onehot_prob"], skip)
    if bool(torch.isnan(metrics["entropy_norm"]).all()):
        return [Finding(NAME, "recorded", "skip", "attention statistics are not finite (see nonfinite)")]
    kinds = classify(metrics, t)
    n_heads = record.n_layers * record.n_heads
    untrained = at_chance(loss_nats, vocab_size, t["chance_margin"])
    findings: list[Finding] = []
    sharp_fix = _FIX_QK_NORM if getattr(record, "qk_norm", False) else _FIX_SHARP
    for kind, check, fix in (("runaway", "saturated_layer", sharp_fix), ("flat", "flat_layer", _FIX_FLAT)):
        if kind == "flat" and untrained:
            continue
        broken = kinds[kind]
        share = int(broken.sum()) / n_heads
        systemic = share >= t["broken_head_fraction"]
        for layer in range(record.n_layers):
            heads = [h for h in range(record.n_heads) if broken[layer, h]]
            layer_broken = len(heads) / record.n_heads >= t["layer_fraction"]
            status = "fail" if heads and (systemic or layer_broken) else ("warn" if heads else "pass")
            # the rule that decided, as the finding's metric: the layer's share, or the model's
            model_wide = round(share, 4) if systemic and not layer_broken else None
            findings.append(_layer_finding(record, metrics, kinds, layer, heads, kind, check, status, fix, t,
                                           model_wide))
    if untrained and bool(kinds["flat"].any()):
        findings.append(Finding(
            NAME, "flat_layer", "skip",
            f"{int(kinds['flat'].sum())} of {n_heads} heads are flat, but the model's loss on the probe "
            f"({loss_nats:.2f} nats) is at chance (log V = {math.log(vocab_size):.2f}): an untrained "
            "model attends uniformly; nothing to judge.",
            metric="loss_nats", value=round(loss_nats, 4), threshold=round(math.log(vocab_size) - t["chance_margin"], 4),
        ))
    for layer in range(record.n_layers):
        findings.extend(_healthy_notes(metrics, kinds, layer, t))
    return findings


def _details(metrics: dict[str, torch.Tensor], layer: int, head: int) -> dict[str, float]:
    return {name: round(float(value[layer, head]), 4) for name, value in metrics.items()}


def _layer_finding(record: AttentionRecord, metrics, kinds, layer: int, heads: list[int], kind: str,
                   check: str, status: str, fix: str, t: dict[str, float],
                   model_wide: float | None = None) -> Finding:
    """One finding per layer and kind: the broken heads it holds (pass when none).

    ``model_wide``: the model's broken-head fraction when that, not this layer's share, is what
    fails the layer (a minority of heads broken in many layers); the finding then reports it
    against ``broken_head_fraction``."""
    where = Where(layer=layer, sublayer="attn")
    share = round(len(heads) / record.n_heads, 4)
    spread = metrics["logit_std"][layer]
    softcap = getattr(record, "softcap", None)
    seen = f" (scores after the model's soft-cap at {softcap:g}, as the softmax sees them)" if softcap else ""
    if not heads:
        if kind == "runaway":
            message = (f"layer {layer}: no head has runaway logits (widest median logit std "
                       f"{float(spread.max()):.2f}, limit {t['max_logit_std']:g})")
        else:
            message = (f"layer {layer}: no head is flat (narrowest median logit std "
                       f"{float(spread.min()):.2f}, limit {t['min_logit_std']:g})")
        return Finding(NAME, check, "pass", message + seen, where=where, metric="broken_head_fraction",
                       value=0.0, threshold=t["broken_head_fraction"])
    factor = math.sqrt(record.d_head)
    if kind == "runaway":
        worst = max(heads, key=lambda h: float(spread[h]))
        on_first = [h for h in heads if metrics["sink_mass"][layer, h] >= t["sink_mass"]]
        target = ("; " + ("it is" if len(heads) == 1 else f"{len(on_first)} of them are")
                  + " one-hot on the first token, which a healthy sink's logits never are this wide"
                  if on_first else "")
        message = (
            f"layer {layer}: {len(heads)} of {record.n_heads} heads {'has' if len(heads) == 1 else 'have'} "
            "runaway logits and collapsed attention "
            f"(head {worst}: median logit std {float(spread[worst]):.1f} > {t['max_logit_std']:g}, "
            f"top-two gap {float(metrics['logit_gap'][layer, worst]):.1f} nats, one-hot at "
            f"{float(metrics['onehot_fraction'][layer, worst]):.0%} of positions, normalised entropy "
            f"{float(metrics['entropy_norm'][layer, worst]):.2f}){target}. Logits "
            f"sqrt(d_head) = {factor:.1f} times too wide are what a missing 1/sqrt(d_head) gives."
        )
        metric = "saturated_head_fraction"
    else:
        worst = min(heads, key=lambda h: float(spread[h]))
        message = (
            f"layer {layer}: {len(heads)} of {record.n_heads} heads {'is' if len(heads) == 1 else 'are'} flat "
            f"(head {worst}: "
            f"normalised entropy {float(metrics['entropy_norm'][layer, worst]):.2f}, median logit std "
            f"{float(spread[worst]):.2f} < {t['min_logit_std']:g}). Logits sqrt(d_head) = {factor:.1f} "
            "times too narrow are what a 1/d_head scale gives."
        )
        metric = "flat_head_fraction"
    message += seen
    value, threshold = share, t["layer_fraction"]
    if status == "warn":
        message += " Too few heads to call it a model-wide bug; worth a look."
    elif model_wide is not None:
        message += (f" A minority here, but {model_wide:.0%} of the model's heads are broken this way "
                    f"(limit {t['broken_head_fraction']:.0%}): a model-wide bug.")
        metric, value, threshold = f"model_{metric}", model_wide, t["broken_head_fraction"]
    return Finding(
        NAME, check, status, message, where=Where(layer=layer, head=worst, sublayer="attn"), metric=metric,
        value=value, threshold=threshold, fix=fix + f" (the model uses {record.scale:.3g})",
        details={f"{kind}_heads": heads, **_details(metrics, layer, worst)},
    )


def _healthy_notes(metrics, kinds, layer: int, t: dict[str, float]) -> list[Finding]:
    """``info`` for sink heads and for sharp heads at a healthy logit scale."""
    notes = []
    for kind, check, what in (
        ("sink", "sink_heads", "attention sink head{s} ({values} of weight on the first token) at a "
                               "healthy logit scale. Trained models use sinks as a no-op; this is not saturation."),
        ("sharp", "sharp_heads", "sharp head{s} ({values} of positions one-hot on content tokens) at a "
                                 "healthy logit scale: previous-token, copy, induction or local heads; not saturation."),
    ):
        heads = [h for h in range(kinds[kind].shape[1]) if kinds[kind][layer, h]]
        if not heads:
            continue
        stat = "sink_mass" if kind == "sink" else "content_onehot_fraction"
        strongest = max(heads, key=lambda h: float(metrics[stat][layer, h]))
        values = ", ".join(f"H{h} {float(metrics[stat][layer, h]):.0%}" for h in heads)
        notes.append(Finding(
            NAME, check, "info",
            f"layer {layer}: {len(heads)} " + what.format(s="s" if len(heads) > 1 else "", values=values),
            where=Where(layer=layer, head=strongest), metric=stat,
            value=round(float(metrics[stat][layer, strongest]), 4),
            threshold=t["sink_mass"] if kind == "sink" else t["saturated_fraction"],
            details={f"{kind}_heads": heads, **_details(metrics, layer, strongest)},
        ))
    return notes
