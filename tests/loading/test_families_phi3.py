"""Phi-3 in the hooked decoder: fused qkv and gate/up split by the loader, LongRoPE, a window.

LongRoPE switches factor sets with the forward's largest position: original context 16, so the
12-token batch uses ``short_factor`` and a 24-token one ``long_factor``; the factors are far from
1 so that using the wrong set, or none, moves logits well past the tolerance.
"""

from __future__ import annotations

import pytest
from family_checks import (
    ATOL,
    VOCAB,
    Case,
    check_model_contract,
    family_pair,
    max_logit_error,
    test_logits_match_transformers,  # noqa: F401 - collected here, with this module's pair
)

pytestmark = pytest.mark.usefixtures("single_thread")

_BASE = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, original_max_position_embeddings=64,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
_LONGROPE = {
    "rope_type": "longrope", "rope_theta": 10000.0,
    "short_factor": [1.0, 1.5, 3.0, 6.0], "long_factor": [1.0, 2.0, 8.0, 20.0],
}
CASES = {
    "phi3": Case("phi3", "phi3", _BASE),
    "phi3-longrope": Case("phi3-longrope", "phi3", {
        **_BASE, "original_max_position_embeddings": 16, "rope_parameters": _LONGROPE,
    }),
    # Phi-4-mini's layout: RoPE on the first half of each head only (partial_rotary_factor),
    # LongRoPE factors for those 4 dims.
    "phi3-partial-longrope": Case("phi3-partial-longrope", "phi3", {
        **_BASE, "original_max_position_embeddings": 16, "rope_parameters": {
            **_LONGROPE, "partial_rotary_factor": 0.5, "short_factor": [1.0, 4.0], "long_factor": [2.0, 16.0],
        },
    }),
    "phi3-window-mha": Case("phi3-window-mha", "phi3", {**_BASE, "num_key_value_heads": 4, "sliding_window": 4}),
}


pair = family_pair(CASES)


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_long_inputs_use_long_factors(pair, path: str) -> None:
    case, reference, model = pair
    if "longrope" not in case.name:
        pytest.skip("no LongRoPE")
    assert max_logit_error(case, reference, model, path, lengths=(24, 20), seq_len=24) <= ATOL


def test_config_and_parameters(pair) -> None:
    case, reference, model = pair
    config = model.config
    assert model.n_params() == sum(p.numel() for p in reference.parameters())
    assert not (config.qkv_bias or config.attn_out_bias or config.mlp_bias)
    if case.name == "phi3-longrope":
        scaling = config.rope_scaling
        assert (scaling.kind, scaling.original_max_positions, scaling.factor) == ("longrope", 16, 4.0)
        assert scaling.short_factor == (1.0, 1.5, 3.0, 6.0) and scaling.long_factor == (1.0, 2.0, 8.0, 20.0)
        assert model.rope_attention_factor == pytest.approx(reference.model.rotary_emb.attention_scaling)
    assert config.rotary_dims == (4 if case.name == "phi3-partial-longrope" else None)
    assert config.rope_dim == (4 if case.name == "phi3-partial-longrope" else 8)
    if case.name == "phi3-window-mha":
        assert (config.sliding_window, config.sliding_layers, config.kv_heads) == (4, None, 4)


def test_hooks_cache_nnsight_and_native_format(pair, tmp_path) -> None:
    _, _, model = pair
    check_model_contract(model, tmp_path / "native", read="blocks.0.attn.hook_v")
