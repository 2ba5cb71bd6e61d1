"""length_extrapolation: does loss hold past the context the model claims?

The failure (seed primer): learned absolute positions have a hard limit at their table; RoPE
degrades past its trained length unless scaled (YaRN, linear, dynamic NTK, Llama 3); ALiBi holds.
The boundary is the model's claimed context, ``max_positions``, which already includes any RoPE
scaling (a model that claims 32k through YaRN must hold to 32k).

For each probe kind, on the longest probe that reaches past the boundary:

* in-context loss: mean loss over positions [boundary/2, boundary) (repeated probes: only the
  predictable positions);
* beyond loss: mean loss over positions [boundary, length);
* ``fail`` when beyond - in-context > ``max_loss_increase`` nats *and* beyond / in-context >
  ``max_loss_ratio``;
* effective context: the first position past boundary/2 where a sliding window of loss departs
  from the in-context level by those same margins (None while it holds).
"""

from __future__ import annotations

from typing import Any

import torch

from workbench.analyzers import merged_thresholds
from workbench.findings import Finding, Where
from workbench.measurements.length import LengthProbe, LengthRecord

NAME = "length_extrapolation"



def thresholds_from(profile_values: dict[str, Any] | None) -> dict[str, float]:
    return merged_thresholds(NAME, profile_values)


def _predictable(probe: LengthProbe) -> torch.Tensor:
    """Loss with unpredictable positions (the first block of a repeated probe) set to NaN."""
    loss = probe.loss.clone().float()
    if probe.block_len is not None:
        loss[: probe.block_len - 1] = float("nan")
    return loss


def levels(probe: LengthProbe, boundary: int) -> tuple[float, float]:
    """(in-context loss, beyond loss) of one probe (NaN where there are no such positions)."""
    loss = _predictable(probe)
    inside = loss[boundary // 2 : boundary]
    beyond = loss[boundary:]
    mean = lambda x: float(torch.nanmean(x)) if x.numel() else float("nan")  # noqa: E731
    return mean(inside), mean(beyond)


def effective_context(probe: LengthProbe, boundary: int, t: dict[str, float]) -> int | None:
    """First position where the windowed loss leaves the in-context level (None: it holds)."""
    inside, _ = levels(probe, boundary)
    if inside != inside:  # NaN
        return None
    loss = _predictable(probe)
    window = max(4, int(boundary * t["window_fraction"]))
    for start in range(boundary // 2, loss.shape[0] - window + 1, max(1, window // 2)):
        level = float(torch.nanmean(loss[start : start + window]))
        if level - inside > t["max_loss_increase"] and level > t["max_loss_ratio"] * inside:
            return start
    return None


def analyze(record: LengthRecord | None, thresholds: dict[str, Any] | None = None) -> list[Finding]:
    if record is None:
        return [Finding(NAME, "recorded", "skip", "the length sweep was not run")]
    t = thresholds_from(thresholds)
    boundary = record.boundary
    findings: list[Finding] = []
    failed = [p for p in record.probes if p.error is not None]
    if failed:
        first = min(failed, key=lambda p: p.length)
        learned = record.positions == "learned"
        findings.append(Finding(
            NAME, "position_table", "fail",
            f"the model cannot process {first.length} tokens: {first.error}. "
            + ("Learned absolute positions have no entry past their table." if learned else ""),
            where=Where(positions=(boundary, first.length)), metric="max_tokens",
            value=float(boundary), threshold=float(first.length),
            fix="Keep inputs within the position table, or move to a relative position scheme "
                "(RoPE with scaling, ALiBi) and fine-tune at the longer context.",
        ))
    for kind in sorted({p.kind for p in record.probes}):
        findings.extend(_kind_findings(record, kind, t))
    if not any(p.length > boundary for p in record.probes):
        skipped = [n for n in record.skipped_lengths if n > boundary]
        findings.append(Finding(
            NAME, "beyond_context", "skip",
            f"no probe reached past the claimed context ({boundary:,} tokens)"
            + (f": {', '.join(f'{n:,}' for n in skipped)} tokens exceed this profile's probe cap"
               if skipped else ""),
            metric="boundary", value=float(boundary),
            fix=("Raise probes.max_tokens in the run profile (--profile long probes past the claim)."
                 if skipped else "Add probe lengths past the claimed context to the profile's probes.lengths."),
        ))
    return findings


def _kind_findings(record: LengthRecord, kind: str, t: dict[str, float]) -> list[Finding]:
    boundary = record.boundary
    probes = [p for p in record.probes if p.kind == kind and p.loss is not None]
    beyond = [p for p in probes if p.length > boundary]
    if not beyond:
        return []
    probe = max(beyond, key=lambda p: p.length)
    inside, outside = levels(probe, boundary)
    effective = effective_context(probe, boundary, t)
    increase = outside - inside
    degraded = increase > t["max_loss_increase"] and outside > t["max_loss_ratio"] * inside
    scaling = record.positions == "rope" and record.trained_context != boundary
    context_note = (f" (trained at {record.trained_context:,}, extended to {boundary:,} by RoPE scaling)"
                    if scaling else "")
    details = {"in_context_loss": round(inside, 4), "beyond_loss": round(outside, 4),
               "probe_length": probe.length, "effective_context": effective}
    if degraded:
        return [Finding(
            NAME, f"loss_beyond_context_{kind}", "fail",
            f"{kind} probe: loss rises from {inside:.2f} nats inside the context to {outside:.2f} past "
            f"{boundary:,} tokens{context_note}; it departs at position "
            f"{effective if effective is not None else boundary:,}.",
            where=Where(positions=(boundary, probe.length)), metric="loss_increase_nats",
            value=round(increase, 4), threshold=t["max_loss_increase"],
            fix="Keep inputs within the effective context, or extend it: RoPE scaling (YaRN, "
                "dynamic NTK, linear) with a short fine-tune at the longer length; ALiBi holds "
                "past its training length by design.",
            details=details,
        )]
    return [Finding(
        NAME, f"loss_beyond_context_{kind}", "pass",
        f"{kind} probe: loss holds past {boundary:,} tokens{context_note} ({inside:.2f} -> "
        f"{outside:.2f} nats up to {probe.length:,} tokens).",
        where=Where(positions=(boundary, probe.length)), metric="loss_increase_nats",
        value=round(increase, 4), threshold=t["max_loss_increase"], details=details,
    )]
