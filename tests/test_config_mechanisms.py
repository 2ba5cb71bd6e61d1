"""DecoderConfig's family fields: off by default, validated, and kept by to_dict / from_dict."""

from __future__ import annotations

import json

import pytest

from workbench.config import ConfigError, DecoderConfig, RopeScaling

BASE = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=48, max_positions=64)
MOE = dict(n_experts=8, top_k=2)


def test_mechanisms_are_off_by_default() -> None:
    config = DecoderConfig(**BASE)
    assert not (config.qk_norm or config.post_norms or config.embed_scale or config.router_bias)
    assert (config.attn_softcap, config.final_softcap, config.clip_qkv, config.alibi_bias_max) == (None,) * 4
    assert (config.norm_offset, config.norm_bias, config.router_score) == (0.0, True, "softmax")
    assert (config.rope_dim, config.qk_dim, config.value_dim, config.scale) == (8, 8, 8, 8**-0.5)


def test_mla_sizes() -> None:
    config = DecoderConfig(**BASE, mla_kv_rank=16, mla_rope_dim=4, d_head_v=6)
    assert (config.attention_kind, config.rope_dim, config.qk_dim, config.value_dim) == ("MLA", 4, 12, 6)
    assert config.scale == pytest.approx(12**-0.5)


@pytest.mark.parametrize("fields, message", [
    (dict(attn_softcap=0.0), "attn_softcap"),
    (dict(final_softcap=-30.0), "final_softcap"),
    (dict(clip_qkv=float("inf")), "clip_qkv"),
    (dict(router_score="relu", **MOE), "router_score"),
    (dict(n_expert_groups=3, **MOE), "n_expert_groups"),
    (dict(n_expert_groups=4, topk_groups=5, **MOE), "topk_groups"),
    (dict(n_expert_groups=4, topk_groups=1, n_experts=8, top_k=3), "top_k"),
    (dict(mla_kv_rank=16, mla_rope_dim=None), "mla_rope_dim"),
    (dict(mla_kv_rank=16, mla_rope_dim=3), "RoPE needs an even"),
    (dict(d_head_v=0), "d_head_v"),
    (dict(rotary_dims=10), "rotary_dims"),
    (dict(rotary_dims=3), "RoPE needs an even"),
    (dict(rope_scaling=RopeScaling("longrope", 4.0, 16, short_factor=(1.0,) * 4, long_factor=(1.0,) * 3)),
     "long_factor"),
    (dict(rope_scaling=RopeScaling("longrope", 4.0, None, short_factor=(1.0,) * 4, long_factor=(1.0,) * 4)),
     "original_max_positions"),
])
def test_inconsistent_fields_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DecoderConfig(**{**BASE, **fields})


def test_round_trip_keeps_every_family_field() -> None:
    config = DecoderConfig(
        **BASE, **MOE, qk_norm=True, attn_softcap=50.0, final_softcap=30.0, post_norms=True, norm_offset=1.0,
        norm_bias=False, embed_scale=True, alibi_bias_max=8.0, clip_qkv=6.0, router_score="sigmoid",
        router_bias=True, n_expert_groups=4, topk_groups=2, routed_scale=2.5, shared_expert_gate=False,
        mla_kv_rank=16, mla_rope_dim=4, mla_q_rank=12, d_head_v=6, local_rope_theta=10_000.0, rotary_dims=4,
        rope_scaling=RopeScaling("longrope", 4.0, 16, short_factor=(1.0, 2.0), long_factor=(3.0, 4.0)),
    )
    assert DecoderConfig.from_dict(json.loads(config.to_json())) == config
