"""length_extrapolation: does the model hold the context it claims, and past it?

The claim is ``max_positions`` after any RoPE scaling (a model that claims 32k through YaRN must
hold to 32k). The failure (seed primer): learned absolute positions end at their table; RoPE
degrades past its trained length unless scaled and fine-tuned (YaRN, linear, dynamic NTK,
Llama 3); ALiBi holds.

Each kind of probe (natural text, copy at a bounded distance) is cut into windows of
``window_fraction`` x the claim (at least ``min_window`` tokens); a window's level is its mean
loss over the predictable targets of each seed, averaged over the seeds (their spread is kept).
Two absolute references judge it:

* the model's own loss at or below its trained length: the lowest window level there;
* chance, log V: a reference at or above ``chance_fraction`` x log V means the model does not do
  the task at all, and its curve is never judged as holding.

A window has departed when its level is above the reference by more than
``max_loss_increase`` nats (and ``spread_multiple`` x the seeds' spread at the reference) and by
more than ``max_loss_ratio`` x. The effective context is the start of the first departed window
after the reference window from which at least ``persistence`` of the windows stay departed: a
lone noisy window inside a flat curve is never named.

Verdicts:

* ``fail``: the model breaks its own claim: the effective context is inside it, a declared RoPE
  scaling breaks the model (with the scaling switched off the same weights cope at the trained
  length, with it they do not), or the forward crashes or goes non-finite inside the claim;
* ``skip``: the model is at chance everywhere (random or untrained weights): nothing to judge;
  or no probe reached past the claim (not verified, with how to verify);
* ``warn``: it holds its claim and stops coping past it (the finding gives the effective
  context and the fix); ``fail_beyond_claim`` (the ``long`` profile) makes that a ``fail``; a
  learned position table that ends where the config says is this kind of honest limit;
* ``pass``: it holds to the longest probe past its claim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from workbench.analyzers import merged_thresholds
from workbench.findings import Finding, Where
from workbench.measurements.length import LengthProbe, LengthRecord

NAME = "length_extrapolation"

FIX_EXTEND = ("Keep inputs within the effective context, or extend it: RoPE scaling (YaRN, dynamic NTK, "
              "linear) with a short fine-tune at the longer length; ALiBi holds past its training "
              "length by design.")


def thresholds_from(profile_values: dict[str, Any] | None) -> dict[str, Any]:
    """The thresholds of ``profiles/default.toml`` (values and sources are written there) with a
    profile's overrides laid over them."""
    return merged_thresholds(NAME, profile_values)


@dataclass(frozen=True)
class Curve:
    """One probe's windowed loss: what the verdicts are read from."""

    kind: str
    length: int
    window: int  # tokens per window
    levels: list[float]  # per window: mean over seeds of the mean predictable loss, nats
    spreads: list[float]  # per window: standard deviation over seeds
    reference: float  # the lowest level in the trained context
    reference_spread: float  # mean over the trained context's windows of the seeds' spread
    departure: int | None  # the effective context (a window start), None: holds to the end


def window_size(boundary: int, t: dict[str, Any]) -> int:
    return max(int(t["min_window"]), int(round(boundary * t["window_fraction"])))


def window_levels(probe: LengthProbe, window: int) -> tuple[list[float], list[float]]:
    """(levels, spreads) per window of ``window`` target positions, NaN where none is predictable."""
    assert probe.loss_by_seed is not None and probe.predictable is not None
    loss_ST = torch.where(probe.predictable, probe.loss_by_seed.float(), torch.nan)
    levels, spreads = [], []
    for start in range(0, probe.length, window):
        # loss index i predicts the token at position i + 1
        chunk = loss_ST[:, max(0, start - 1) : start + window - 1]
        per_seed = torch.nanmean(chunk, dim=1) if chunk.numel() else torch.full((loss_ST.shape[0],), torch.nan)
        per_seed = per_seed[~torch.isnan(per_seed)]
        levels.append(float(per_seed.mean()) if per_seed.numel() else math.nan)
        spreads.append(float(per_seed.std(unbiased=False)) if per_seed.numel() > 1 else 0.0)
    return levels, spreads


def mean_level(probe: LengthProbe, start: int, stop: int) -> float:
    """Mean predictable loss of targets in positions [start, stop), averaged over seeds (NaN: none)."""
    loss = probe.loss
    if loss is None:
        return math.nan
    part = loss[max(0, start - 1) : max(0, stop - 1)]
    return float(torch.nanmean(part)) if part.numel() and not bool(torch.isnan(part).all()) else math.nan


def curve(probe: LengthProbe, record: LengthRecord, t: dict[str, Any]) -> Curve:
    window = window_size(record.boundary, t)
    levels, spreads = window_levels(probe, window)
    inside = [i for i in range(len(levels)) if (i + 1) * window <= max(record.trained_context, window)
              and not math.isnan(levels[i])]
    if not inside:
        inside = [i for i in range(len(levels)) if not math.isnan(levels[i])][:1]
    best = min(inside, key=lambda i: levels[i]) if inside else None
    reference = levels[best] if best is not None else math.nan
    # the seeds' spread over the trained context: one window's own spread from a few seeds is too noisy
    reference_spread = sum(spreads[i] for i in inside) / len(inside) if inside else 0.0
    margin = max(t["max_loss_increase"], t["spread_multiple"] * reference_spread)
    departed = [not math.isnan(level) and level - reference > margin and level > t["max_loss_ratio"] * reference
                for level in levels]
    departure = None
    for i, gone in enumerate(departed):
        if best is None or i <= best:  # it copes at least to the end of its reference window
            continue
        rest = [d for d, level in zip(departed[i:], levels[i:], strict=True) if not math.isnan(level)]
        if gone and sum(rest) >= t["persistence"] * len(rest):
            departure = i * window
            break
    return Curve(probe.kind, probe.length, window, levels, spreads, reference, reference_spread, departure)


def near_chance(level: float, record: LengthRecord, t: dict[str, Any]) -> bool:
    return math.isnan(level) or level >= t["chance_fraction"] * record.chance_loss


def _longest(probes: list[LengthProbe], kind: str) -> LengthProbe | None:
    ran = [p for p in probes if p.kind == kind and p.loss_by_seed is not None]
    return max(ran, key=lambda p: p.length) if ran else None


def analyze(record: LengthRecord | None, thresholds: dict[str, Any] | None = None) -> list[Finding]:
    if record is None:
        return [Finding(NAME, "recorded", "skip", "the length sweep was not run")]
    t = thresholds_from(thresholds)
    findings = _crashes(record, t)
    kinds = sorted({p.kind for p in record.probes})
    curves = {kind: curve(p, record, t) for kind in kinds if (p := _longest(record.probes, kind)) is not None}
    scaling, broken = _scaling(record, t)
    findings += scaling
    judged = {k: c for k, c in curves.items() if not near_chance(c.reference, record, t) and k not in broken}
    if not judged and not broken and curves:
        unscaled_copes = any(not near_chance(mean_level(p, p.length // 2, p.length), record, t)
                             for p in record.unscaled)
        if not unscaled_copes:
            levels = ", ".join(f"{k} {c.reference:.2f}" for k, c in sorted(curves.items()))
            return findings + [Finding(
                NAME, "chance", "skip",
                f"the model is at chance everywhere (best loss within its trained context: {levels} nats; "
                f"uniform guessing is log V = {record.chance_loss:.2f}): random or untrained weights have "
                "no context to extrapolate, so length extrapolation is not judged.",
                metric="reference_loss_nats", value=round(min(c.reference for c in curves.values()), 4),
                threshold=round(t["chance_fraction"] * record.chance_loss, 4),
                fix="Train the model (or load its trained weights), then run the length sweep.",
            )]
    for kind, c in sorted(curves.items()):
        if kind in broken:
            continue
        if kind not in judged:
            findings.append(Finding(
                NAME, f"loss_within_claim_{kind}", "info",
                f"{kind} probe: not judged, its loss within the trained context ({c.reference:.2f} nats) is "
                f"near chance (log V = {record.chance_loss:.2f}): the model does not do this task.",
                metric="reference_loss_nats", value=round(c.reference, 4),
                threshold=round(t["chance_fraction"] * record.chance_loss, 4),
            ))
            continue
        findings += _judge(record, c, t)
    findings += _not_verified(record, curves, judged)
    return findings


def _details(record: LengthRecord, c: Curve) -> dict[str, Any]:
    beyond = [v for i, v in enumerate(c.levels) if i * c.window >= record.boundary and not math.isnan(v)]
    return {"reference_loss": round(c.reference, 4), "reference_spread": round(c.reference_spread, 4),
            "chance_loss": round(record.chance_loss, 4), "window": c.window, "probe_length": c.length,
            "beyond_loss": round(sum(beyond) / len(beyond), 4) if beyond else None,
            "window_levels": [None if math.isnan(v) else round(v, 4) for v in c.levels],
            "window_spreads": [round(v, 4) for v in c.spreads], "effective_context": c.departure}


def _claim_note(record: LengthRecord) -> str:
    if record.trained_context != record.boundary:
        return (f" (trained at {record.trained_context:,}, extended to {record.boundary:,} by "
                f"{record.rope_scaling or 'RoPE'} scaling)")
    return ""


def _judge(record: LengthRecord, c: Curve, t: dict[str, Any]) -> list[Finding]:
    """The within-claim and beyond-claim verdicts of one kind's curve."""
    boundary, details = record.boundary, _details(record, c)
    where_claim = Where(positions=(0, min(boundary, c.length)))
    if c.departure is not None and c.departure < boundary:
        level = c.levels[c.departure // c.window]
        return [Finding(
            NAME, f"loss_within_claim_{c.kind}", "fail",
            f"{c.kind} probe: the model breaks its claim of {boundary:,} tokens{_claim_note(record)}: loss "
            f"rises from {c.reference:.2f} nats to {level:.2f} from position {c.departure:,} on "
            f"(chance is {record.chance_loss:.2f}); its effective context is {c.departure:,} tokens.",
            where=Where(positions=(c.departure, min(boundary, c.length))), metric="loss_increase_nats",
            value=round(level - c.reference, 4), threshold=t["max_loss_increase"],
            fix=f"Claim only what the model holds (max_position_embeddings = {c.departure:,}), or fine-tune "
                "it at the claimed length (with RoPE scaling if it is past the trained length).",
            details=details,
        )]
    findings = [Finding(
        NAME, f"loss_within_claim_{c.kind}", "pass",
        f"{c.kind} probe: loss holds at {c.reference:.2f} nats (spread {c.reference_spread:.2f}) up to "
        f"{min(boundary, c.length):,} tokens{_claim_note(record)}.",
        where=where_claim, metric="reference_loss_nats", value=round(c.reference, 4), details=details,
    )]
    if c.length <= boundary or details["beyond_loss"] is None:  # not reached, or no finite loss there
        return findings
    where_beyond = Where(positions=(boundary, c.length))
    if c.departure is None:
        return findings + [Finding(
            NAME, f"loss_beyond_claim_{c.kind}", "pass",
            f"{c.kind} probe: loss holds past the claimed {boundary:,} tokens, to the longest probe "
            f"({c.length:,} tokens; {c.reference:.2f} -> {details['beyond_loss']:.2f} nats).",
            where=where_beyond, metric="loss_increase_nats",
            value=round(details["beyond_loss"] - c.reference, 4), threshold=t["max_loss_increase"],
            details=details,
        )]
    level = c.levels[c.departure // c.window]
    status = "fail" if t["fail_beyond_claim"] else "warn"
    return findings + [Finding(
        NAME, f"loss_beyond_claim_{c.kind}", status,
        f"{c.kind} probe: holds its claimed {boundary:,} tokens, then stops coping: loss rises from "
        f"{c.reference:.2f} nats to {level:.2f} from position {c.departure:,} (chance {record.chance_loss:.2f}); "
        f"effective context {c.departure:,} tokens"
        + (" (this profile fails models that do not extrapolate)." if status == "fail" else "."),
        where=Where(positions=(c.departure, c.length)), metric="loss_increase_nats",
        value=round(level - c.reference, 4), threshold=t["max_loss_increase"], fix=FIX_EXTEND,
        details=details,
    )]


def _crashes(record: LengthRecord, t: dict[str, Any]) -> list[Finding]:
    """Forwards that raised, or produced non-finite losses: fail inside the claim, else a limit."""
    findings = []
    boundary = record.boundary
    failed = [p for p in record.probes if p.error is not None]
    if failed:
        first = min(failed, key=lambda p: p.length)
        learned = record.positions == "learned"
        inside = first.length <= boundary
        status = "fail" if inside or t["fail_beyond_claim"] else "warn"
        check = "position_table" if learned else "forward"
        if learned and not inside:
            message = (f"learned absolute positions end at {boundary:,} tokens, as the config claims: "
                       f"a {first.length:,}-token input cannot run ({first.error}). An honest limit.")
            fix = f"Keep inputs within {boundary:,} tokens; learned positions cannot extrapolate."
        else:
            message = (f"the forward crashes at {first.length:,} tokens ({first.error})"
                       + (f", inside the claimed {boundary:,}." if inside else f", past the claimed {boundary:,}."))
            fix = "Keep inputs shorter than the crash, or fix the model code or config that raises."
        findings.append(Finding(NAME, check, status, message, where=Where(positions=(boundary, first.length)),
                                metric="max_tokens", value=float(boundary), threshold=float(first.length),
                                fix=fix))
    bad = [(p, p.first_nonfinite()) for p in record.probes if p.first_nonfinite() is not None]
    if bad:
        probe, position = min(bad, key=lambda pair: pair[1])
        inside = position < boundary
        findings.append(Finding(
            NAME, "nonfinite_loss", "fail" if inside or t["fail_beyond_claim"] else "warn",
            f"{probe.kind} probe: the loss is NaN or infinite from position {position:,}"
            + (f", inside the claimed {boundary:,} tokens." if inside else f", past the claimed {boundary:,} tokens."),
            where=Where(positions=(position, probe.length)), metric="first_nonfinite_position",
            value=float(position), threshold=float(boundary),
            fix="Run the nonfinite analyzer to find the sublayer that overflows; compute in float32 or bfloat16.",
        ))
    return findings


def _scaling(record: LengthRecord, t: dict[str, Any]) -> tuple[list[Finding], set[str]]:
    """A declared RoPE scaling against the same weights with it off, at the trained context."""
    if not record.unscaled:
        return [], set()
    broken: set[str] = set()
    rows = []
    for off in record.unscaled:
        on = _longest(record.probes, off.kind)
        if off.loss_by_seed is None or on is None:
            continue
        n = min(off.length, on.length)
        level_off, level_on = mean_level(off, n // 2, n), mean_level(on, n // 2, n)
        if near_chance(level_off, record, t):
            continue
        rows.append((off.kind, level_on, level_off, n))
        if level_on - level_off > t["max_loss_increase"] and level_on > t["max_loss_ratio"] * level_off:
            broken.add(off.kind)
    if not rows:
        return [], broken
    kind, level_on, level_off, n = max(rows, key=lambda row: row[1] - row[2])
    scaling = f"{record.rope_scaling} RoPE scaling (factor {record.rope_factor:g})"
    where = Where(positions=(n // 2, n))
    if broken:
        return [Finding(
            NAME, "rope_scaling", "fail",
            f"the declared {scaling} breaks the model: at its trained length ({n:,} tokens) the {kind} probe's "
            f"loss is {level_on:.2f} nats with the scaling and {level_off:.2f} without it (chance "
            f"{record.chance_loss:.2f}); the weights were never fine-tuned with this scaling.",
            where=where, metric="loss_increase_nats", value=round(level_on - level_off, 4),
            threshold=t["max_loss_increase"],
            fix="Fine-tune the model with the scaling at the extended length, or remove rope_scaling from "
                f"config.json and claim {record.trained_context:,} tokens.",
            details={"loss_with_scaling": round(level_on, 4), "loss_without_scaling": round(level_off, 4)},
        )], broken
    return [Finding(
        NAME, "rope_scaling", "pass",
        f"the declared {scaling} keeps the model's loss at its trained length ({n:,} tokens): {kind} probe "
        f"{level_on:.2f} nats with it, {level_off:.2f} without.",
        where=where, metric="loss_increase_nats", value=round(level_on - level_off, 4),
        threshold=t["max_loss_increase"],
    )], broken


def _not_verified(record: LengthRecord, curves: dict[str, Curve], judged: dict[str, Curve]) -> list[Finding]:
    """A skip saying the claim (or past it) was not reached, and how to reach it."""
    longest = max((p.length for p in record.probes if p.loss_by_seed is not None), default=0)
    if longest > record.boundary or not judged:
        return []
    boundary = record.boundary
    reach = "claim not verified" if longest < boundary else "not verified past the claim"
    skipped = [n for n in record.skipped_lengths if n > longest]
    return [Finding(
        NAME, "beyond_context", "skip",
        f"{reach}: the longest probe was {longest:,} tokens and the model claims {boundary:,}"
        + (f" ({', '.join(f'{n:,}' for n in skipped)} tokens exceed this run's longest probe)" if skipped else "")
        + f"; to verify, run `workbench extrapolation --tokens {2 * boundary}` (or --profile long).",
        where=Where(positions=(longest, boundary)), metric="longest_probe", value=float(longest),
        threshold=float(boundary),
        fix=f"Run `workbench extrapolation --tokens {2 * boundary}` (or --profile long) to probe past the claim.",
    )]


def section(record: LengthRecord, findings: list[Finding]) -> dict[str, Any]:
    """The report's length section: the record's curves, with each probe's loss within the claim
    (its second half, up to the probe's end when it is shorter) and past it, and the effective
    context per kind where it was measured (None: it held to the longest probe, past the claim)."""
    data = record.to_dict()
    data["effective_context"] = {}
    for finding in findings:  # measured only where a probe reached past the claim or left inside it
        beyond = finding.check.startswith("loss_beyond_claim_")
        left = finding.check.startswith("loss_within_claim_") and finding.status == "fail"
        if beyond or left:
            kind = finding.check.rsplit("_", 1)[-1]
            data["effective_context"][kind] = finding.details.get("effective_context")
    for entry, probe in zip(data["probes"], record.probes, strict=True):
        inside_end = min(record.boundary, probe.length)
        inside = mean_level(probe, inside_end // 2, inside_end)
        beyond = mean_level(probe, record.boundary, probe.length) if probe.length > record.boundary else math.nan
        entry["in_context_loss"] = None if math.isnan(inside) else round(inside, 4)
        entry["beyond_loss"] = None if math.isnan(beyond) else round(beyond, 4)
        spread = None
        if probe.loss_by_seed is not None and len(probe.seeds) > 1:
            per_seed = [mean_level(LengthProbe(probe.kind, probe.length, (s,), probe.loss_by_seed[i : i + 1],
                                               probe.predictable), inside_end // 2, inside_end)
                        for i, s in enumerate(probe.seeds)]
            spread = round(float(torch.tensor(per_seed).std(unbiased=False)), 4)
        entry["in_context_spread"] = spread
    data["unscaled"] = [{"kind": p.kind, "length": p.length, "error": p.error,
                         "in_context_loss": None if math.isnan(v := mean_level(p, p.length // 2, p.length))
                         else round(v, 4)} for p in record.unscaled]
    return data
