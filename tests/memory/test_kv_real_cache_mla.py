"""MLA's KV cache against the planner's prediction, to the byte (as SmolLM2's GQA cache is).

The planner (``workbench kv``) charges MLA one latent of ``mla_kv_rank`` plus one shared RoPE key
of ``mla_rope_dim`` values per token per layer, whatever the head count. Here the hooked decoder
and transformers both run DeepSeek V3's cache shape (latent 512, RoPE key 64) on a model that is
otherwise tiny (the cache does not depend on the rest): both caches hold exactly the predicted
bytes, and hold the same numbers.
"""

from __future__ import annotations

import pytest
import torch
from family_checks import Case, init_weights

import workbench
from workbench.memory.planner import kv_bytes_per_token, kv_cache_bytes
from workbench.model.decoder import HookedDecoder
from workbench.model.kv_cache import KVCache
from workbench.model.norms import RMSNorm
from workbench.settings.architectures import get_architecture

pytestmark = pytest.mark.usefixtures("single_thread")


def _v3_cache_shape(**small):
    """The deepseek-v3 architecture profile, shrunk everywhere except its cache shape."""
    real = get_architecture("deepseek-v3")
    shrunk = dict(vocab_size=128, d_model=64, n_layers=3, n_heads=2, n_kv_heads=None, d_mlp=32, d_expert=16,
                  d_shared_expert=16, n_experts=4, top_k=2, moe_layers=(1, 2), max_positions=256,
                  rope_scaling=None, mla_q_rank=24)
    return real.replace(**{**shrunk, **small})


@pytest.mark.parametrize("dtype,name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_mla_cache_bytes_equal_the_prediction(dtype, name) -> None:
    config = _v3_cache_shape()
    real = get_architecture("deepseek-v3")
    assert (config.mla_kv_rank, config.mla_rope_dim, config.d_head) == (512, 64, 128) == (
        real.mla_kv_rank, real.mla_rope_dim, real.d_head)
    model = init_weights(HookedDecoder(config)).to(dtype).eval()
    cache = KVCache(config.n_layers)
    with torch.no_grad():
        model(torch.randint(0, 128, (1, 37)), cache=cache)
        model(torch.randint(0, 128, (1, 1)), cache=cache)
    per_token = config.n_layers * (512 + 64) * (4 if name == "fp32" else 2)
    assert kv_bytes_per_token(config, name) == per_token
    assert cache.nbytes() == 38 * per_token == kv_cache_bytes(config, 38, kv_dtype=name)
    # what the cache holds: one latent and one RoPE key per token, not per head
    assert tuple(cache.keys[0].shape) == (1, 1, 38, 512) and tuple(cache.values[0].shape) == (1, 1, 38, 64)


def test_mla_cache_equals_transformers_cache(tmp_path) -> None:
    """A DeepSeek V3 checkpoint of this cache shape: transformers' cache, ours and the plan agree."""
    case = Case("deepseek_v3-cache", "deepseek_v3", dict(
        vocab_size=128, hidden_size=64, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, q_lora_rank=24, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=4, n_group=2, topk_group=1, num_experts_per_tok=2,
        n_shared_experts=1, first_k_dense_replace=1, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
    ))
    reference = case.hf_model()
    reference.save_pretrained(tmp_path)
    model = workbench.load_model(tmp_path)
    tokens = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    cache = KVCache(model.config.n_layers)
    with torch.no_grad():
        model(tokens, cache=cache)
        hf_cache = reference(tokens, use_cache=True).past_key_values
    predicted = 40 * kv_bytes_per_token(model.config, "fp32")
    assert predicted == 40 * 3 * (512 + 64) * 4
    assert cache.nbytes() == predicted
    assert sum(layer.keys.nbytes + layer.values.nbytes for layer in hf_cache.layers) == predicted
    for layer, theirs in enumerate(hf_cache.layers):  # the same latent and RoPE key (rotate-half order)
        torch.testing.assert_close(cache.keys[layer], theirs.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.values[layer], theirs.values, atol=1e-5, rtol=1e-5)


def test_mla_flops_follow_two_params_per_token() -> None:
    """The analytic FLOPs of a dense MLA model: 2 x non-embedding params x tokens for every matrix
    (the latent expansion runs once per key, here once per token), plus the attention pairs and
    the unembedding, exactly."""
    from workbench.measurements.flops import forward_flops

    config = _v3_cache_shape(n_experts=0, top_k=0, moe_layers=None, d_shared_expert=0, mla_kv_rank=32,
                             mla_rope_dim=8, d_head=16, d_head_v=12)
    model = HookedDecoder(config)
    norms = sum(p.numel() for m in model.modules() if isinstance(m, RMSNorm) for p in m.parameters())
    matrices = model.n_params() - model.embed.weight.numel() - model.unembed.weight.numel() - norms
    batch, seq_len = 2, 5
    pairs = batch * seq_len * (seq_len + 1) // 2
    attention = 2 * pairs * config.n_heads * (config.qk_dim + config.value_dim) * config.n_layers
    unembed = 2 * batch * seq_len * config.d_model * config.vocab_size
    assert forward_flops(config, batch, seq_len).total == 2 * matrices * batch * seq_len + attention + unembed
