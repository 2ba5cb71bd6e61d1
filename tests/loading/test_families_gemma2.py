"""Gemma 2 and Gemma 3 (text) in the hooked decoder: transformers' logits, and soft-caps judged
where the softmax is.

Tiny configs make the mechanisms bite: caps of 5 (attention) and 3 (logits) instead of 50 and 30
(the random logits here are a few units wide, a real model's tens), query_pre_attn_scalar 16 for
a head size of 8, a window of 4 on alternating layers (12-token batch), norm weights around 0
(Gemma's ``1 + weight``). transformers has no SDPA path for Gemma 2 (softcapping): eager only.
With an attention cap both of our paths run the explicit one (SDPA cannot cap scores); the
uncapped variant runs SDPA for real.
"""

from __future__ import annotations

import pytest
import torch
from family_checks import (
    VOCAB,
    Case,
    check_model_contract,
    family_pair,
    test_logits_match_transformers,  # noqa: F401 - collected here, with this module's pair
)

import workbench
from workbench.analyzers import saturation

pytestmark = pytest.mark.usefixtures("single_thread")

_BASE = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=64, query_pre_attn_scalar=16,
    sliding_window=4, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
CASES = {
    "gemma2": Case("gemma2", "gemma2", _BASE, attn_implementation="eager"),
    "gemma2-uncapped-untied": Case("gemma2-uncapped-untied", "gemma2", {
        **_BASE, "attn_logit_softcapping": None, "final_logit_softcapping": None, "tie_word_embeddings": False,
        "attention_bias": True,
    }, attn_implementation="eager"),
    # Gemma 3's text decoder: QK-norm, a local RoPE (base 10k) on the two sliding layers and a
    # linearly scaled one (base 1M, factor 4) on the global layer; no caps; SDPA in transformers.
    "gemma3_text": Case("gemma3_text", "gemma3_text", {
        **_BASE, "attn_logit_softcapping": None, "final_logit_softcapping": None,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1_000_000.0},
        },
    }),
}


pair = family_pair(CASES)


def test_config_and_parameters(pair) -> None:
    case, reference, model = pair
    config = model.config
    assert model.n_params() == sum(p.numel() for p in reference.parameters())
    assert config.sliding_window == 4
    assert config.scale == pytest.approx(16**-0.5)
    assert config.post_norms and config.embed_scale and config.norm_offset == 1.0
    assert config.activation == "gelu_tanh" and config.gated_mlp
    assert config.qk_norm == (case.model_type == "gemma3_text")
    if case.model_type == "gemma3_text":
        assert (config.sliding_layers, config.local_rope_theta, config.rope_theta) == ((0, 1), 10_000.0, 1e6)
        assert (config.rope_scaling.kind, config.rope_scaling.factor) == ("linear", 4.0)
        assert (config.attn_softcap, config.final_softcap) == (None, None)
        return
    assert config.sliding_layers == (0, 2) and config.local_rope_theta is None
    if case.name == "gemma2":
        assert (config.attn_softcap, config.final_softcap, config.tie_embeddings) == (5.0, 3.0, True)
    else:
        assert (config.attn_softcap, config.final_softcap, config.tie_embeddings) == (None, None, False)


def test_hooks_cache_nnsight_and_native_format(pair, tmp_path) -> None:
    _, _, model = pair
    check_model_contract(model, tmp_path / "native", read="blocks.0.hook_attn_out")


def test_caps_bound_what_the_softmax_sees(pair) -> None:
    """hook_attn_scores and the recorder's chunks carry the capped scores (|s| < cap); the
    output logits stay inside the final cap."""
    case, _, model = pair
    if case.name != "gemma2":
        pytest.skip("uncapped variant")
    tokens = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(4))
    scores = []
    with model.hooks([(lambda n: n.endswith("hook_attn_scores"), lambda s, h: scores.append(s))]), torch.no_grad():
        logits = model(tokens)
    finite = torch.cat([s[torch.isfinite(s)] for s in scores])
    assert float(finite.abs().max()) < 5.0
    assert float(logits.abs().max()) < 3.0
    with workbench.record(model, attention=True) as recording, torch.no_grad():
        model(tokens)
    record = recording.attention
    assert record.softcap == 5.0 and record.to_dict()["softcap"] == 5.0
    finite_std = record.logit_std[torch.isfinite(record.logit_std)]
    assert float(finite_std.max()) < 5.0  # the std of values inside (-5, 5)
    findings = saturation.analyze(record)
    layer_findings = [f for f in findings if f.check == "saturated_layer"]
    assert len(layer_findings) == model.config.n_layers
    assert all("soft-cap at 5" in f.message for f in layer_findings)
