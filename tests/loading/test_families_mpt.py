"""MPT in the hooked decoder: MPT's ALiBi slopes, the fused Wqkv, clip_qkv, bias-free LayerNorms.

transformers has no SDPA path for MPT: eager only. 6 heads exercise MPT's non-power-of-2 slope
rule (which equals BLOOM's at the default alibi_bias_max of 8; transformers' MptModel always
uses 8, so other values are checked on the slopes alone); clip_qkv 0.3 sits inside the spread of q, k and v here, so it
clamps many values; softmax_scale 0.5 replaces 1/sqrt(d_head).
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

from workbench.model.positions import alibi_slopes

pytestmark = pytest.mark.usefixtures("single_thread")

_BASE = dict(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2, max_seq_len=64, bos_token_id=1, eos_token_id=2)
CASES = {
    "mpt": Case("mpt", "mpt", _BASE, attn_implementation="eager", takes_position_ids=False),
    "mpt-6-heads-clip": Case("mpt-6-heads-clip", "mpt", {
        **_BASE, "d_model": 36, "n_heads": 6,
        "attn_config": {"clip_qkv": 0.3, "softmax_scale": 0.5},
    }, attn_implementation="eager", takes_position_ids=False),
}


pair = family_pair(CASES)


def test_config_and_parameters(pair) -> None:
    case, reference, model = pair
    config = model.config
    assert model.n_params() == sum(p.numel() for p in reference.parameters())
    assert (config.positions, config.norm_bias, config.d_mlp) == ("alibi", False, 4 * config.d_model)
    if case.name == "mpt-6-heads-clip":
        assert (config.clip_qkv, config.scale, config.alibi_bias_max) == (0.3, 0.5, 8.0)
    else:
        assert (config.clip_qkv, config.alibi_bias_max) == (None, 8.0)


@pytest.mark.parametrize("heads", [4, 6, 12])
@pytest.mark.parametrize("bias_max", [8.0, 12.0])
def test_slopes_follow_mpt(heads: int, bias_max: float) -> None:
    """Equal to transformers' MPT slopes; equal to BLOOM's rule only at MPT's default of 8."""
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    reference = -build_mpt_alibi_tensor(heads, 2, alibi_bias_max=bias_max)[:, 0, 0]  # slope x (0 - 1)
    torch.testing.assert_close(alibi_slopes(heads, bias_max), reference, atol=0, rtol=0)
    assert torch.allclose(alibi_slopes(heads), reference) == (bias_max == 8.0)


def test_hooks_cache_nnsight_and_native_format(pair, tmp_path) -> None:
    _, _, model = pair
    check_model_contract(model, tmp_path / "native", read="blocks.0.attn.hook_k")
