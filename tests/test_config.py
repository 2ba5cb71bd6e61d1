"""DecoderConfig: validation, round trips, and property tests of config parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.config import ConfigError, DecoderConfig, RopeScaling
from workbench.errors import CheckpointError
from workbench.loading.families import config_from_hf

BASE = dict(vocab_size=100, d_model=64, n_layers=2, n_heads=4, d_head=16, d_mlp=128, max_positions=256)


@st.composite
def configs(draw) -> DecoderConfig:
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.integers(1, 4))
    experts = draw(st.sampled_from([0, 4, 8]))
    return DecoderConfig(
        vocab_size=draw(st.integers(2, 50_000)),
        d_model=draw(st.integers(8, 512)),
        n_layers=draw(st.integers(1, 8)),
        n_heads=heads,
        n_kv_heads=kv,
        d_head=2 * draw(st.integers(1, 64)),
        d_mlp=draw(st.integers(1, 1024)),
        max_positions=draw(st.integers(1, 1 << 20)),
        positions=draw(st.sampled_from(["learned", "sinusoidal", "rope", "alibi", "none"])),
        norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
        activation=draw(st.sampled_from(["gelu", "gelu_tanh", "silu", "relu"])),
        sliding_window=draw(st.one_of(st.none(), st.integers(1, 4096))),
        n_experts=experts,
        top_k=draw(st.integers(1, experts)) if experts else 0,
        rope_scaling=draw(st.one_of(st.none(), st.builds(RopeScaling, kind=st.sampled_from(["linear", "dynamic"]),
                                                          factor=st.floats(1.0, 16.0)))),
    )


@settings(max_examples=60, deadline=None)
@given(configs())
def test_dict_and_json_round_trip(config):
    assert DecoderConfig.from_dict(config.to_dict()) == config
    assert DecoderConfig.from_dict(json.loads(config.to_json())) == config


@settings(max_examples=60, deadline=None)
@given(configs(), st.sampled_from(["vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_mlp"]),
       st.one_of(st.integers(-5, 0), st.just(1.5), st.just("8"), st.just(True)))
def test_bad_sizes_are_refused_with_the_field_name(config, field, value):
    with pytest.raises(ConfigError, match=field):
        config.replace(**{field: value})


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 16), st.integers(1, 16))
def test_head_grouping_must_divide(n_heads, n_kv_heads):
    if n_heads % n_kv_heads:
        with pytest.raises(ConfigError, match="multiple of n_kv_heads"):
            DecoderConfig(**{**BASE, "n_heads": n_heads, "n_kv_heads": n_kv_heads})
    else:
        config = DecoderConfig(**{**BASE, "n_heads": n_heads, "n_kv_heads": n_kv_heads})
        assert config.attention_kind == ("MHA" if n_heads == n_kv_heads else "MQA" if n_kv_heads == 1 else "GQA")


def test_unknown_fields_and_choices_are_errors():
    with pytest.raises(ConfigError, match="unknown DecoderConfig fields: colour"):
        DecoderConfig.from_dict({**BASE, "colour": "red"})
    with pytest.raises(ConfigError, match="positions must be one of"):
        DecoderConfig(**{**BASE, "positions": "relative"})
    with pytest.raises(ConfigError, match="top_k"):
        DecoderConfig(**{**BASE, "n_experts": 4, "top_k": 5})


def test_window_for_layer_and_trained_context():
    config = DecoderConfig(**BASE, sliding_window=8, sliding_layers=(0,))
    assert config.window_for_layer(0) == 8 and config.window_for_layer(1) is None
    scaled = DecoderConfig(**{**BASE, "max_positions": 1024},
                           rope_scaling=RopeScaling("yarn", 4.0, original_max_positions=256))
    assert scaled.trained_context == 256 and DecoderConfig(**BASE).trained_context == 256


LLAMA = {"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
         "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 5e5}}


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(LLAMA)), st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=3)),
                       max_size=3))
def test_hf_config_parsing_never_crashes_uncontrolled(overrides):
    """Any corruption of config.json is either accepted or a one-line CheckpointError naming the file."""
    hf = {**LLAMA, **overrides}
    try:
        config = config_from_hf(hf, Path("ckpt/config.json"))
    except CheckpointError as error:
        message = str(error)
        assert message.startswith("ckpt/config.json: ") and "\n" not in message
    else:
        assert config.d_model > 0 and config.n_heads % config.kv_heads == 0


def test_hf_llama_config_reads_transformers_5_rope_parameters():
    config = config_from_hf(LLAMA, Path("config.json"))
    assert config.rope_theta == 5e5 and config.kv_heads == 2 and config.d_head == 16
    llama3 = {**LLAMA, "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 64}}
    scaled = config_from_hf(llama3, Path("config.json"))
    assert scaled.rope_scaling.kind == "llama3" and scaled.trained_context == 64
