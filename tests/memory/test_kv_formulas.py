"""First-principles cases for the ideal engine: KV bytes per token, KV totals and weights equal
arithmetic written out here from the shape (GQA, MQA, MHA, MLA, sliding and alternating
windows, fp8 and fp32 caches, tensor parallelism), on every shipped architecture profile and an
MQA variant. The planner's code is not used to compute the expected values."""

from __future__ import annotations

import pytest

from workbench.memory import planner
from workbench.settings import get_architecture, get_device, list_architectures

KV_BYTES = {"bf16": 2, "fp8": 1, "fp32": 4}
CONTEXT = 8192


def expected(config, kv_dtype: str, tp: int) -> tuple[int, int, int]:
    """(KV bytes per token, KV bytes at CONTEXT, weights bytes) per device, by hand."""
    if config.mla_kv_rank is not None:  # one latent and one RoPE key, on every device
        per_layer = (config.mla_kv_rank + config.mla_rope_dim) * KV_BYTES[kv_dtype]
    else:  # K and V for the KV heads this device holds (replicated when fewer heads than devices)
        per_layer = 2 * -(-config.kv_heads // tp) * config.d_head * KV_BYTES[kv_dtype]
    windowed = 0
    if config.sliding_window is not None:
        windowed = config.n_layers if config.sliding_layers is None else len(config.sliding_layers)
    kept = (config.n_layers - windowed) * CONTEXT + windowed * min(CONTEXT, config.sliding_window or CONTEXT)
    return config.n_layers * per_layer, per_layer * kept, -(-planner.n_params(config) * 2 // tp)


def cases() -> list[tuple[str, str, int]]:
    found = []
    for name in [*list_architectures(), "mqa", "mha"]:
        config = get_architecture("llama-3.1-8b" if name in ("mqa", "mha") else name)
        for kv_dtype in KV_BYTES:
            for tp in (1, 2, 8):
                if config.n_heads % tp == 0:
                    found.append((name, kv_dtype, tp))
    return found


CASES = cases()


def config_for(name: str):
    if name == "mqa":
        return get_architecture("llama-3.1-8b").replace(n_kv_heads=1, name="llama-3.1-8b-mqa")
    if name == "mha":
        return get_architecture("llama-3.1-8b").replace(n_kv_heads=32, name="llama-3.1-8b-mha")
    config = get_architecture(name)
    return config.replace(weights_quant=None)  # bf16 weights in every case


def test_the_table_covers_every_attention_kind():
    kinds = {config_for(name).attention_kind for name, _, _ in CASES}
    assert kinds == {"GQA", "MQA", "MHA", "MLA"}
    assert any(config_for(n).sliding_layers for n, _, _ in CASES)  # alternating windows
    assert any(config_for(n).sliding_window and not config_for(n).sliding_layers for n, _, _ in CASES)
    assert len(CASES) >= 60


@pytest.mark.parametrize(("name", "kv_dtype", "tp"), CASES)
def test_ideal_plan_equals_first_principles(name, kv_dtype, tp):
    config = config_for(name)
    per_token, kv_total, weights = expected(config, kv_dtype, tp)
    assert planner.kv_bytes_per_token(config, kv_dtype, tp=tp) == per_token
    assert planner.kv_cache_bytes(config, CONTEXT, kv_dtype=kv_dtype, tp=tp) == kv_total
    result = planner.plan(config, get_device("h200"), batch=1, context=CONTEXT, kv_dtype=kv_dtype, tp=tp,
                          engine="ideal", weights_dtype="bf16")  # fmt: skip
    assert (result.kv_bytes_per_token, result.kv_bytes, result.weights_bytes) == (per_token, kv_total, weights)
