"""Analyzers on synthetic records with known answers: each check has a case that must be flagged
and a healthy case that must not be. (The zoo gives the same proof on trained checkpoints:
tests/test_zoo_analyzers.py.)"""

from __future__ import annotations

import math

import torch
from helpers import TINY_DECODERS

from workbench.analyzers import length_extrapolation, nonfinite, routing_collapse, saturation
from workbench.config import DecoderConfig
from workbench.model.decoder import HookedDecoder
from workbench.recorders import record
from workbench.recorders.attention import STATS, AttentionRecord
from workbench.recorders.nonfinite import ActivationWatch, scan_weights

L, H, T = 3, 4, 64


def attention_record(
    max_prob: torch.Tensor, sink: torch.Tensor, logit_std: float | torch.Tensor = 2.0,
    entropy: float | torch.Tensor = 0.5, logit_gap: float | torch.Tensor = 1.0,
) -> AttentionRecord:
    """A record whose per-head statistics are given as ``[L, H]`` (or one number) and constant
    over T."""
    stats = {name: torch.full((L, H, T), 0.5) for name in STATS}
    for name, value in (("max_prob", max_prob), ("sink_mass", sink), ("logit_std", logit_std),
                        ("entropy_norm", entropy), ("logit_gap", logit_gap)):
        stats[name] = torch.as_tensor(value, dtype=torch.float32).expand(L, H)[:, :, None].expand(L, H, T).clone()
    return AttentionRecord(n_layers=L, n_heads=H, n_tokens=T, d_head=64, scale=0.125, stats=stats)


def by_check(findings, check):
    return [f for f in findings if f.check == check]


def statuses(findings, status):
    return [(f.check, f.where.layer) for f in findings if f.status == status]


def per_head(default: float, **changes: float) -> torch.Tensor:
    """``[L, H]`` filled with ``default``; ``changes`` like ``l1=v`` (a layer) or ``l0h3=v`` (a head)."""
    values = torch.full((L, H), default)
    for key, value in changes.items():
        layer, _, head = key[1:].partition("h")
        if head:
            values[int(layer), int(head)] = value
        else:
            values[int(layer)] = value
    return values


def test_unscaled_layer_is_a_fail_at_that_layer():
    # every head of layer 1 is one-hot with logits 8x too wide
    record = attention_record(per_head(0.3, l1=0.99), torch.full((L, H), 0.01), logit_std=per_head(2.0, l1=20.0))
    findings = saturation.analyze(record)
    assert statuses(findings, "fail") == [("saturated_layer", 1)]
    fail = by_check(findings, "saturated_layer")[1]
    assert fail.value == 1.0 and fail.details["runaway_heads"] == list(range(H))
    assert "sqrt(d_head)" in fail.message


def test_healthy_attention_gets_no_fail_and_no_warn():
    findings = saturation.analyze(attention_record(torch.full((L, H), 0.3), torch.full((L, H), 0.05)))
    assert {f.status for f in findings} == {"pass"}
    assert len(by_check(findings, "saturated_layer")) == L and len(by_check(findings, "flat_layer")) == L


def test_sink_heads_are_info_not_saturation():
    # all of layer 2's weight on the first token, at a healthy logit scale: sinks
    record = attention_record(per_head(0.3, l2=0.97), per_head(0.05, l2=0.97), logit_std=per_head(2.0, l2=6.0),
                              logit_gap=per_head(1.0, l2=15.0))
    findings = saturation.analyze(record)
    assert not [f for f in findings if f.status in ("fail", "warn")]
    sinks = by_check(findings, "sink_heads")
    assert [(f.where.layer, f.status) for f in sinks] == [(2, "info")]
    assert sinks[0].details["sink_heads"] == list(range(H))


def test_first_token_saturation_with_runaway_logits_fails_in_every_layer():
    # the same one-hot-on-token-0 pattern, but with logits 8x wider than the sink's: saturated
    record = attention_record(torch.full((L, H), 0.99), torch.full((L, H), 0.99), logit_std=48.0, logit_gap=120.0)
    findings = saturation.analyze(record)
    assert statuses(findings, "fail") == [("saturated_layer", layer) for layer in range(L)]
    assert not by_check(findings, "sink_heads")
    assert "first token" in by_check(findings, "saturated_layer")[0].message


def test_a_runaway_gap_alone_is_enough():
    record = attention_record(per_head(0.3, l0=0.99), torch.full((L, H), 0.01), logit_gap=per_head(1.0, l0=40.0))
    assert statuses(saturation.analyze(record), "fail") == [("saturated_layer", 0)]


def test_minority_saturation_in_every_layer_fails_in_every_layer():
    # one head of four in each layer (25% of the model) with runaway logits
    max_prob = per_head(0.3, l0h1=0.99, l1h1=0.99, l2h1=0.99)
    std = per_head(2.0, l0h1=30.0, l1h1=30.0, l2h1=30.0)
    findings = saturation.analyze(attention_record(max_prob, torch.full((L, H), 0.01), logit_std=std))
    fails = [f for f in findings if f.status == "fail"]
    assert [(f.where.layer, f.where.head) for f in fails] == [(0, 1), (1, 1), (2, 1)]
    assert all(f.value == 0.25 for f in fails)


def test_one_runaway_head_among_many_is_a_warn():
    # 1 of 12 heads (8%): below broken_head_fraction (10%) and a quarter of its layer
    record = attention_record(per_head(0.3, l0h3=0.98), torch.full((L, H), 0.01), logit_std=per_head(2.0, l0h3=30.0))
    findings = saturation.analyze(record)
    assert statuses(findings, "warn") == [("saturated_layer", 0)]
    assert not [f for f in findings if f.status == "fail"]
    assert statuses(saturation.analyze(record, {"broken_head_fraction": 0.05}), "fail") == [("saturated_layer", 0)]


def test_sharp_heads_at_a_healthy_scale_pass():
    # previous-token / induction heads: one-hot on content, logits no wider than a healthy model's
    record = attention_record(per_head(0.3, l0h3=0.98, l1h0=0.98), torch.full((L, H), 0.01), logit_std=5.0,
                              logit_gap=6.0)
    findings = saturation.analyze(record)
    assert not [f for f in findings if f.status in ("fail", "warn")]
    assert [(f.where.layer, f.where.head) for f in by_check(findings, "sharp_heads")] == [(0, 3), (1, 0)]


def test_flat_attention_fails_in_every_layer():
    # 1/d_head: entropy near 1, logit spread far below any healthy head
    record = attention_record(torch.full((L, H), 0.02), torch.full((L, H), 0.01), logit_std=0.3, entropy=0.98,
                              logit_gap=0.01)
    findings = saturation.analyze(record, loss_nats=5.0, vocab_size=49152)
    assert statuses(findings, "fail") == [("flat_layer", layer) for layer in range(L)]
    assert "1/d_head" in by_check(findings, "flat_layer")[0].message


def test_flat_attention_of_an_untrained_model_is_not_judged():
    record = attention_record(torch.full((L, H), 0.02), torch.full((L, H), 0.01), logit_std=0.01, entropy=0.999)
    findings = saturation.analyze(record, loss_nats=math.log(128) + 0.02, vocab_size=128)
    assert not [f for f in findings if f.status in ("fail", "warn")]
    assert [f.status for f in by_check(findings, "flat_layer")] == ["skip"]


def test_a_broad_head_with_a_healthy_spread_is_not_flat():
    # SmolLM2's layer-0 heads: entropy 0.95 with logit std 0.74
    record = attention_record(torch.full((L, H), 0.05), torch.full((L, H), 0.01), logit_std=0.74, entropy=0.95)
    assert not [f for f in saturation.analyze(record) if f.status != "pass"]


def test_threshold_override_changes_the_verdict():
    record = attention_record(per_head(0.3, l0h0=0.98, l0h1=0.98), torch.full((L, H), 0.01),
                              logit_std=per_head(2.0, l0h0=20.0, l0h1=20.0))
    assert statuses(saturation.analyze(record), "fail") == [("saturated_layer", 0)]
    relaxed = saturation.analyze(record, {"max_logit_std": 25.0})
    assert not [f for f in relaxed if f.status == "fail"]


def test_saturation_skips_short_and_missing_records():
    assert saturation.analyze(None)[0].status == "skip"
    short = attention_record(torch.full((L, H), 0.3), torch.full((L, H), 0.0))
    short.n_tokens = 4
    assert saturation.analyze(short)[0].status == "skip"


def test_dense_model_skips_routing():
    assert routing_collapse.analyze(None, is_moe=False)[0].status == "skip"


def tiny_model() -> HookedDecoder:
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64, max_positions=32)
    return HookedDecoder(config).eval()


def test_nonfinite_weights_name_the_first_tensor():
    model = tiny_model()
    assert nonfinite.analyze_weights(scan_weights(model))[0].status == "pass"
    with torch.no_grad():
        model.blocks[1].mlp.w_in.weight[0, 0] = math.nan
    finding = nonfinite.analyze_weights(scan_weights(model))[0]
    assert finding.status == "fail" and finding.where.layer == 1 and "blocks.1.mlp.w_in.weight" in finding.message


def test_nonfinite_activations_name_the_first_sublayer():
    model = tiny_model()
    with torch.no_grad():
        model.blocks[1].attn.v.weight[:] = math.inf
    watch = ActivationWatch(model)
    with torch.no_grad(), model.hooks(watch.hooks()):
        model(torch.randint(0, 64, (1, 8)))
    finding = nonfinite.analyze_activations(watch.first)[0]
    assert finding.status == "fail" and finding.where.layer == 1 and finding.where.sublayer == "attn"
    healthy = ActivationWatch(tiny_model())
    with torch.no_grad(), healthy.model.hooks(healthy.hooks()):
        healthy.model(torch.randint(0, 64, (1, 8)))
    assert nonfinite.analyze_activations(healthy.first)[0].status == "pass"


def test_default_profile_carries_every_analyzer_threshold_with_its_source():
    from workbench.analyzers import default_thresholds, merged_thresholds, threshold_sources

    for module in (saturation, routing_collapse, length_extrapolation):
        values, sources = default_thresholds(module.NAME), threshold_sources(module.NAME)
        assert values and set(values) == set(sources)
        assert all(len(source) > 20 for source in sources.values())  # a real sentence, not a stub
        # the analyzer reads exactly these, and a profile's override wins
        assert module.thresholds_from(None) == values
        name = next(iter(values))
        assert merged_thresholds(module.NAME, {name: 123})[name] == 123


@torch.no_grad()
def test_alibi_bias_is_not_logit_spread_on_a_long_probe(tiny_decoder):
    """A BLOOM-like ALiBi decoder probed at 1,024 tokens: ALiBi's -m_h (q - k) alone spreads the
    steepest head's logits by about m T / sqrt(12) (over 100 here), far past max_logit_std, yet it
    is position, not content. The recorder leaves it out of the spread, so nothing warns."""
    model = tiny_decoder(TINY_DECODERS["alibi"].replace(max_positions=2048))
    tokens = torch.randint(0, model.config.vocab_size, (1, 1024), generator=torch.Generator().manual_seed(0))
    scores = []
    with model.hooks([(lambda name: name.endswith("attn.hook_attn_scores"), lambda x, point: scores.append(x))]):
        model(tokens)
    with_bias = torch.where(torch.isfinite(scores[0]), scores[0], torch.nan)[0, :, 512:]  # (H, q, S)
    spread_with_bias = torch.nanmean((with_bias - torch.nanmean(with_bias, -1, keepdim=True)) ** 2, -1).sqrt()
    assert float(spread_with_bias.median(dim=-1).values.max()) > 5 * saturation.thresholds_from(None)["max_logit_std"]
    with record(model, attention=True) as recording:
        model(tokens)
    assert float(torch.nanmedian(recording.attention.stats["logit_std"])) < 2.0
    findings = saturation.analyze(recording.attention)
    assert [f for f in findings if f.check == "saturated_layer" and f.status != "pass"] == []
