"""Qwen3 and Qwen3-MoE in the hooked decoder: transformers' logits on both attention paths.

QK-norm is the new mechanism: an RMSNorm over d_head on every query and key head before RoPE.
"""

from __future__ import annotations

import pytest
import torch
from family_checks import (
    VOCAB,
    Case,
    check_model_contract,
    family_pair,
    init_weights,
    test_logits_match_transformers,  # noqa: F401 - collected here, with this module's pair
)

import workbench
from workbench.analyzers import saturation
from workbench.config import DecoderConfig
from workbench.model.decoder import HookedDecoder

pytestmark = pytest.mark.usefixtures("single_thread")

_BASE = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2,
)
CASES = {
    "qwen3": Case("qwen3", "qwen3", _BASE),
    # head_dim 16 != hidden_size / heads, attention biases, tied embeddings, a window of 4 on
    # the layers from max_window_layers on.
    "qwen3-bias-window": Case("qwen3-bias-window", "qwen3", {
        **_BASE, "head_dim": 16, "attention_bias": True, "tie_word_embeddings": True, "num_hidden_layers": 3,
        "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1,
    }),
    # Layer 1 dense (mlp_only_layers), renormalised top-2 of 4 experts.
    "qwen3_moe": Case("qwen3_moe", "qwen3_moe", {
        **_BASE, "num_hidden_layers": 3, "num_experts": 4, "num_experts_per_tok": 2,
        "moe_intermediate_size": 16, "norm_topk_prob": True, "mlp_only_layers": [1],
    }),
}


pair = family_pair(CASES)


def test_config_and_parameters(pair) -> None:
    case, reference, model = pair
    config = model.config
    assert config.qk_norm and config.model_type == case.model_type
    assert model.n_params() == sum(p.numel() for p in reference.parameters())
    hf = reference.config
    assert config.qkv_bias == config.attn_out_bias == bool(hf.attention_bias)
    if case.name == "qwen3-bias-window":
        assert (config.sliding_window, config.sliding_layers) == (4, (1, 2))
    if case.model_type == "qwen3_moe":
        assert (config.n_experts, config.top_k, config.moe_layers, config.d_expert) == (4, 2, (0, 2), 16)
        assert config.d_shared_expert == 0


def test_hooks_cache_nnsight_and_native_format(pair, tmp_path) -> None:
    _, _, model = pair
    check_model_contract(model, tmp_path / "native", read="blocks.0.attn.hook_q")


def test_qk_norm_is_what_hook_q_sees(pair) -> None:
    """hook_q shows the normalised heads: their RMS is the norm's weight, not the projection's."""
    _, _, model = pair
    attn = model.blocks[0].attn
    seen = []
    tokens = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(1))
    with model.hooks([("blocks.0.attn.hook_q", lambda q, hook: seen.append(q))]), torch.no_grad():
        model(tokens)
        raw = attn.q(model.blocks[0].ln1(model.embed(tokens))).view(1, 6, attn.n_heads, attn.d_head)
    expected = raw * torch.rsqrt(raw.pow(2).mean(-1, keepdim=True) + attn.q_norm.eps) * attn.q_norm.weight
    torch.testing.assert_close(seen[0], expected, atol=1e-6, rtol=1e-6)


# --- the saturation analyzer on QK-normed attention ---------------------------------------------

_QK = DecoderConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8, d_mlp=48,
                    max_positions=64, qk_norm=True)


def _saturation(config: DecoderConfig):
    model = init_weights(HookedDecoder(config)).eval()
    tokens = torch.randint(0, VOCAB, (1, 48), generator=torch.Generator().manual_seed(2))
    with workbench.record(model, attention=True) as recording, torch.no_grad():
        model(tokens)
    assert recording.attention.qk_norm
    return saturation.analyze(recording.attention)


def test_qk_normed_attention_is_healthy_at_its_scale() -> None:
    findings = _saturation(_QK)
    assert not [f for f in findings if f.status == "fail"], [f.message for f in findings]


def test_qk_normed_attention_with_a_wrong_scale_fails_and_the_fix_points_at_the_norms() -> None:
    """QK-norm bounds each |q|, |k| to the norm weights' size; a 16x too large scale still
    saturates, and the advice is about the norm weights and the scale, not 'add QK-norm'."""
    findings = _saturation(_QK.replace(attn_scale=16 * 8**-0.5))
    fails = [f for f in findings if f.status == "fail"]
    assert fails
    assert all("q_norm/k_norm" in f.fix and "add QK-norm" not in f.fix for f in fails)
