"""DeepSeek V3 in the hooked decoder: MLA, dense-then-MoE layers, biased sigmoid grouped routing.

The tiny config keeps every mechanism switched on and visible: low-rank queries (and a variant
with one full query projection), a latent of 16 with a 4-dim shared RoPE key, value heads (6)
narrower than the query/key heads (8 + 4), interleaved RoPE rows (permuted by the loader),
layer 0 dense, 8 routed experts in 4 groups of which 2 compete, top-2, one shared expert,
renormalised weights times 2.5. transformers initialises the selection bias at zero; it is set
to a spread comparable with the sigmoid scores so that it changes which experts are chosen.
"""

from __future__ import annotations

import math

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
from workbench.analyzers import routing_collapse
from workbench.config import DecoderConfig
from workbench.model.decoder import HookedDecoder
from workbench.model.mlp import route

pytestmark = pytest.mark.usefixtures("single_thread")


def _spread_selection_bias(model) -> None:
    generator = torch.Generator().manual_seed(7)
    for name, buffer in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buffer.copy_(0.3 * torch.randn(buffer.shape, generator=generator))


_BASE = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4, q_lora_rank=12, kv_lora_rank=16, qk_nope_head_dim=8,
    qk_rope_head_dim=4, v_head_dim=6, n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=2,
    n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5, norm_topk_prob=True,
    max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
CASES = {
    "deepseek_v3": Case("deepseek_v3", "deepseek_v3", _BASE, prepare=_spread_selection_bias),
    "deepseek_v3-full-q": Case("deepseek_v3-full-q", "deepseek_v3", {**_BASE, "q_lora_rank": None},
                               attn_implementation="eager", prepare=_spread_selection_bias),
    # DeepSeek V3's own RoPE: YaRN on the 4 RoPE dims (original context 16 < 64 positions), and
    # the softmax scale times mscale(factor, mscale_all_dim)^2.
    "deepseek_v3-yarn": Case("deepseek_v3-yarn", "deepseek_v3", {**_BASE, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
        "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0,
    }}, prepare=_spread_selection_bias),
}


pair = family_pair(CASES)


def test_config_and_parameters(pair) -> None:
    case, reference, model = pair
    config = model.config
    assert model.n_params() == sum(p.numel() for p in reference.parameters())
    assert config.attention_kind == "MLA"
    assert (config.mla_kv_rank, config.mla_rope_dim, config.d_head, config.d_head_v) == (16, 4, 8, 6)
    assert config.mla_q_rank == (None if case.name == "deepseek_v3-full-q" else 12)
    mscale = 0.1 * math.log(4.0) + 1.0 if case.name == "deepseek_v3-yarn" else 1.0
    assert config.scale == pytest.approx(12**-0.5 * mscale**2)
    assert (config.moe_layers, config.n_experts, config.top_k, config.d_expert, config.d_shared_expert) == (
        (1, 2), 8, 2, 16, 16)
    assert (config.router_score, config.router_bias, config.n_expert_groups, config.topk_groups) == (
        "sigmoid", True, 4, 2)
    assert config.routed_scale == 2.5 and not config.shared_expert_gate
    bias = model.blocks[1].mlp.selection_bias
    assert torch.equal(bias, reference.model.layers[1].mlp.gate.e_score_correction_bias)


def test_hooks_cache_nnsight_and_native_format(pair, tmp_path) -> None:
    _, _, model = pair
    check_model_contract(model, tmp_path / "native", read="blocks.0.attn.hook_latent")


def test_routing_follows_the_biased_choice(pair) -> None:
    """The chosen experts are transformers' (bias included); the weights ignore the bias."""
    _, reference, model = pair
    tokens = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(5))
    seen = {}

    def keep(tensor, hook):
        seen[hook.name.rsplit(".", 1)[-1]] = tensor

    mlp = model.blocks[1].mlp
    points = ("blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_expert_indices", "blocks.1.mlp.hook_expert_weights")
    with model.hooks([(point, keep) for point in points]), torch.no_grad():
        model(tokens)
    with torch.no_grad():
        _, weights, indices = reference.model.layers[1].mlp.gate(seen["hook_pre"])
    ours, theirs = seen["hook_expert_indices"][0].sort(dim=-1), indices.sort(dim=-1)
    assert torch.equal(ours.values, theirs.values)
    torch.testing.assert_close(seen["hook_expert_weights"][0].gather(-1, ours.indices),
                               weights.gather(-1, theirs.indices), atol=1e-6, rtol=1e-6)
    # without the bias the choice differs somewhere (else the bias would not be tested)
    with torch.no_grad():
        logits = mlp.router(seen["hook_pre"].float())
        _, unbiased = route(logits, mlp.top_k, mlp.norm_topk_prob, score="sigmoid", n_groups=mlp.n_groups,
                            topk_groups=mlp.topk_groups, scale=mlp.routed_scale)
    assert not torch.equal(unbiased[0].sort(dim=-1).values, ours.values)


# --- the routing recorder and analyzer judge a biased sigmoid router on what it selects --------

_ROUTED = DecoderConfig(
    vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_head=8, d_head_v=6, d_mlp=48, max_positions=64,
    mla_kv_rank=16, mla_rope_dim=4, mla_q_rank=12, n_experts=8, top_k=2, moe_layers=(1,), d_expert=16,
    d_shared_expert=16, shared_expert_gate=False, router_score="sigmoid", router_bias=True,
    n_expert_groups=4, topk_groups=2, routed_scale=2.5,
)


def _routing_findings(selection_bias: torch.Tensor):
    model = init_weights(HookedDecoder(_ROUTED), std=0.1).eval()
    model.blocks[1].mlp.selection_bias.copy_(selection_bias)
    tokens = torch.randint(0, VOCAB, (2, 64), generator=torch.Generator().manual_seed(6))
    with workbench.record(model, routing=True) as recording, torch.no_grad():
        model(tokens)
    return recording.routing.layers[1], routing_collapse.analyze(recording.routing)


def test_sigmoid_router_importance_is_its_normalised_scores() -> None:
    state, findings = _routing_findings(torch.zeros(8))
    assert state.score == "sigmoid"
    assert float(state.importance.sum()) == pytest.approx(1.0, abs=1e-5)
    assert int(state.load.sum()) == 2 * 64 * 2  # tokens x top_k
    assert not [f for f in findings if f.status == "fail"], [f.message for f in findings]


def test_a_bias_that_selects_two_experts_is_collapse() -> None:
    """The unbiased scores are those of the healthy case above; only the selection bias differs,
    and it alone sends every token to experts 0 and 2: judged on the choice, that is collapse."""
    bias = torch.zeros(8)
    bias[[0, 2]] = 5.0  # sigmoid scores are in (0, 1): +5 wins every choice
    state, findings = _routing_findings(bias)
    assert state.load.tolist() == [128, 0, 128, 0, 0, 0, 0, 0]
    assert any(f.status == "fail" for f in findings), [f.message for f in findings]


def test_bf16_keeps_the_router_in_fp32(pair, tmp_path) -> None:
    """As transformers does: in a bf16 model the sigmoid router's weight and selection bias stay
    fp32 (a bf16 bias of ~1e-3 resolution would change which experts are chosen)."""
    _, _, model = pair
    folder = workbench.save_checkpoint(model, tmp_path / "native")
    half = workbench.load_model(folder, dtype="bfloat16")
    mlp = half.blocks[1].mlp
    assert mlp.router.weight.dtype == mlp.selection_bias.dtype == torch.float32
    assert half.blocks[1].attn.kv_b.weight.dtype == torch.bfloat16
    assert torch.equal(mlp.selection_bias, model.blocks[1].mlp.selection_bias)
    tokens = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        logits = half(tokens)
    assert logits.dtype == torch.bfloat16 and bool(torch.isfinite(logits).all())
