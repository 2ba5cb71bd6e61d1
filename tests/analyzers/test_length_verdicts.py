"""length_extrapolation's verdicts on hand-made loss curves: each status rule of the analyzer,
its references (the model's own level in its trained context, chance) and its effective context.
The same rules on trained models, measured with transformers: tests/zoo/test_length_cases.py."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.analyzers import length_extrapolation
from workbench.measurements.length import LengthProbe, LengthRecord

VOCAB = 128  # chance = log 128 = 4.85 nats


def probe(kind: str, level_T: torch.Tensor, seeds: int = 3, noise: float = 0.05, seed: int = 0,
          predictable: torch.Tensor | None = None) -> LengthProbe:
    """A probe whose loss at target t is ``level_T[t]`` plus per-seed noise."""
    generator = torch.Generator().manual_seed(seed)
    loss_ST = level_T[None] + noise * torch.randn(seeds, level_T.shape[0], generator=generator)
    mask = torch.ones(level_T.shape[0], dtype=torch.bool) if predictable is None else predictable
    return LengthProbe(kind=kind, length=level_T.shape[0] + 1, seeds=tuple(range(seeds)), loss_by_seed=loss_ST,
                       predictable=mask)


def record(boundary: int, *probes: LengthProbe, positions: str = "rope", trained: int | None = None,
           unscaled: tuple[LengthProbe, ...] = ()) -> LengthRecord:
    rec = LengthRecord(boundary=boundary, trained_context=trained or boundary, positions=positions,
                       vocab_size=VOCAB, rope_scaling="linear" if trained else None,
                       rope_factor=boundary / trained if trained else None)
    rec.probes += probes
    rec.unscaled += unscaled
    return rec


def curve(length: int, level: float, rise_at: int | None = None, risen: float = 3.5) -> torch.Tensor:
    """Flat at ``level``, stepping to ``risen`` at target position ``rise_at``."""
    loss = torch.full((length - 1,), level)
    if rise_at is not None:
        loss[rise_at - 1 :] = risen
    return loss


def only(findings, check: str):
    matches = [f for f in findings if f.check == check]
    assert len(matches) == 1, [(f.check, f.status) for f in findings]
    return matches[0]


def test_holding_the_claim_and_stopping_past_it_is_a_warn_with_the_effective_context():
    findings = length_extrapolation.analyze(record(64, probe("copy", curve(256, 0.4, rise_at=128))))
    within, beyond = only(findings, "loss_within_claim_copy"), only(findings, "loss_beyond_claim_copy")
    assert within.status == "pass"
    assert beyond.status == "warn" and beyond.details["effective_context"] == 128
    assert "effective context 128 tokens" in beyond.message and beyond.fix
    assert beyond.where.positions == (128, 256)


def test_the_profile_key_turns_stopping_past_the_claim_into_a_fail():
    findings = length_extrapolation.analyze(record(64, probe("copy", curve(256, 0.4, rise_at=128))),
                                            {"fail_beyond_claim": True})
    assert only(findings, "loss_beyond_claim_copy").status == "fail"


def test_loss_rising_inside_the_claim_breaks_it():
    # an overclaimed context: trained to cope for 64 tokens, claims 512
    findings = length_extrapolation.analyze(record(512, probe("copy", curve(1024, 0.4, rise_at=64))))
    fail = only(findings, "loss_within_claim_copy")
    assert fail.status == "fail" and fail.details["effective_context"] == 64
    assert fail.where.positions == (64, 512) and "512" in fail.fix or "64" in fail.fix
    assert not [f for f in findings if f.check == "loss_beyond_claim_copy"]


def test_holding_past_the_claim_to_the_longest_probe_passes():
    findings = length_extrapolation.analyze(record(64, probe("copy", curve(512, 0.4)), probe("natural", curve(512, 2.0))))
    assert {f.status for f in findings} == {"pass"}
    assert only(findings, "loss_beyond_claim_natural").details["effective_context"] is None


def test_a_model_at_chance_everywhere_is_a_skip_never_a_fail():
    chance = math.log(VOCAB)
    rec = record(64, probe("copy", curve(256, chance + 0.1)), probe("natural", curve(256, chance - 0.2)))
    findings = length_extrapolation.analyze(rec)
    assert [(f.check, f.status) for f in findings] == [("chance", "skip")]
    assert "at chance everywhere" in findings[0].message


def test_a_curve_near_chance_is_not_judged_as_holding():
    chance = math.log(VOCAB)
    rec = record(64, probe("copy", curve(256, 0.4)), probe("natural", curve(256, 0.95 * chance)))
    natural = only(length_extrapolation.analyze(rec), "loss_within_claim_natural")
    assert natural.status == "info" and "not judged" in natural.message


def test_a_noisy_window_inside_a_flat_curve_is_never_the_effective_context():
    loss = curve(512, 0.5)
    loss[200:230] = 2.5  # one bad window inside the claim, flat again after it
    findings = length_extrapolation.analyze(record(256, probe("copy", loss)))
    assert {f.status for f in findings} == {"pass"}


def test_the_effective_context_is_where_the_curve_leaves_for_good():
    loss = curve(1024, 0.5, rise_at=640, risen=3.0)
    loss[100:130] = 2.5  # an early blip
    beyond = only(length_extrapolation.analyze(record(256, probe("copy", loss))), "loss_beyond_claim_copy")
    assert beyond.status == "warn" and 608 <= beyond.details["effective_context"] <= 640


def test_a_rise_within_the_seeds_spread_is_noise():
    findings = length_extrapolation.analyze(record(64, probe("natural", curve(256, 2.0, rise_at=128, risen=2.6),
                                                           noise=4.0)))
    assert "warn" not in {f.status for f in findings} and "fail" not in {f.status for f in findings}


def test_a_learned_table_ending_at_the_claim_is_an_honest_limit():
    rec = record(64, probe("copy", curve(64, 0.4)), positions="learned")
    rec.probes.append(LengthProbe(kind="copy", length=128, error="IndexError: position 127 is past the table"))
    findings = length_extrapolation.analyze(rec)
    table = only(findings, "position_table")
    assert table.status == "warn" and "honest limit" in table.message
    assert only(length_extrapolation.analyze(rec, {"fail_beyond_claim": True}), "position_table").status == "fail"


def test_a_crash_inside_the_claim_fails():
    rec = record(256, probe("copy", curve(64, 0.4)))
    rec.probes.append(LengthProbe(kind="copy", length=128, error="RuntimeError: shape mismatch"))
    crash = only(length_extrapolation.analyze(rec), "forward")
    assert crash.status == "fail" and "inside the claimed 256" in crash.message


def test_nonfinite_loss_inside_the_claim_fails():
    loss = curve(256, 0.4)
    loss[100:] = float("nan")
    bad = only(length_extrapolation.analyze(record(128, probe("copy", loss))), "nonfinite_loss")
    assert bad.status == "fail" and bad.where.positions[0] == 101


def test_a_run_that_cannot_reach_the_claim_says_not_verified_and_how():
    rec = record(8192, probe("natural", curve(2048, 3.0)))
    rec.skipped_lengths = [16384]
    findings = length_extrapolation.analyze(rec)
    skip = only(findings, "beyond_context")
    assert skip.status == "skip" and skip.message.startswith("claim not verified:")
    assert "--tokens 16384" in skip.fix and "16,384" in skip.message
    assert only(findings, "loss_within_claim_natural").status == "pass"


def test_untuned_rope_scaling_fails_when_the_same_weights_cope_without_it():
    scaled = probe("copy", curve(512, 3.0))  # the scaling wrecks it from the first token
    plain = probe("copy", curve(64, 0.4))  # scaling off: fine at the trained 64
    findings = length_extrapolation.analyze(record(256, scaled, trained=64, unscaled=(plain,)))
    fail = only(findings, "rope_scaling")
    assert fail.status == "fail" and fail.details["loss_with_scaling"] == pytest.approx(3.0, abs=0.1)
    assert fail.details["loss_without_scaling"] == pytest.approx(0.4, abs=0.1)
    assert not [f for f in findings if f.check == "chance"]


def test_tuned_rope_scaling_passes_its_check_and_is_judged_on_its_claim():
    scaled = probe("copy", curve(512, 0.45, rise_at=384))
    plain = probe("copy", curve(64, 0.6))
    findings = length_extrapolation.analyze(record(256, scaled, trained=64, unscaled=(plain,)))
    assert only(findings, "rope_scaling").status == "pass"
    assert only(findings, "loss_within_claim_copy").status == "pass"
    assert only(findings, "loss_beyond_claim_copy").status == "warn"


def test_random_weights_with_a_declared_scaling_are_at_chance_not_broken():
    chance = math.log(VOCAB)
    findings = length_extrapolation.analyze(record(256, probe("copy", curve(512, chance)), trained=64,
                                                   unscaled=(probe("copy", curve(64, chance)),)))
    assert [(f.check, f.status) for f in findings] == [("chance", "skip")]


def test_copy_probes_judge_only_their_predictable_targets():
    loss = curve(256, 0.3)
    first_copies = (torch.arange(1, 256) % 32) < 16
    loss[first_copies] = 4.8  # first copies are unpredictable by construction
    findings = length_extrapolation.analyze(record(64, probe("copy", loss, predictable=~first_copies)))
    assert {f.status for f in findings} == {"pass"}
    assert only(findings, "loss_within_claim_copy").value == pytest.approx(0.3, abs=0.05)


def test_the_section_gives_in_context_loss_for_probes_shorter_than_the_claim():
    rec = record(8192, probe("natural", curve(2048, 3.0)))
    rec.probes.insert(0, rec.probes[0].prefix(1024))
    section = length_extrapolation.section(rec, length_extrapolation.analyze(rec))
    assert [p["in_context_loss"] for p in section["probes"]] == [pytest.approx(3.0, abs=0.05)] * 2
    assert all(p["beyond_loss"] is None for p in section["probes"])
    assert section["probes"][0]["in_context_spread"] is not None
