"""The KV-memory prediction against real caches: to the byte."""

from __future__ import annotations

import pytest
import torch

from workbench.config import DecoderConfig
from workbench.memory.planner import kv_bytes_per_token, kv_cache_bytes
from workbench.model.decoder import HookedDecoder
from workbench.model.kv_cache import KVCache


@pytest.mark.parametrize("dtype,name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_tiny_cache_bytes_equal_the_prediction(dtype, name, n_kv_heads):
    config = DecoderConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=n_kv_heads, d_head=8,
                           d_mlp=64, max_positions=128)
    model = HookedDecoder(config).to(dtype).eval()
    cache = KVCache(config.n_layers)
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 37)), cache=cache)
        model(torch.randint(0, 64, (1, 1)), cache=cache)
    assert cache.nbytes() == 38 * kv_bytes_per_token(config, name) == kv_cache_bytes(config, 38, kv_dtype=name,
                                                                                   block_size=1)


@pytest.mark.slow
def test_smollm2_prediction_equals_a_real_cache_and_transformers_cache(smollm2):
    ours, theirs = smollm2.workbench, smollm2.reference
    tokens = torch.randint(17, ours.config.vocab_size, (1, 300), generator=torch.Generator().manual_seed(0))
    cache = KVCache(ours.config.n_layers)
    with torch.no_grad():
        ours(tokens, cache=cache)
        hf_cache = theirs(tokens, use_cache=True).past_key_values
    predicted = 300 * kv_bytes_per_token(ours.config, "fp32")
    assert predicted == 300 * 2 * 30 * 3 * 64 * 4  # 2 (k, v) x layers x kv heads x d_head x fp32
    assert cache.nbytes() == predicted
    hf_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in hf_cache.layers)
    assert hf_bytes == predicted
    # fp16 halves it
    assert kv_bytes_per_token(ours.config, "fp16") * 2 == kv_bytes_per_token(ours.config, "fp32")
