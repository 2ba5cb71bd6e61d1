"""First principles of the KV planner (workbench.memory) and the kv_memory analyzer: exact
KV/weight byte counts on published shapes, tight max_context/max_batch, tensor parallelism,
findings, and Hypothesis properties of the KV formula (linear in tokens, monotone in every size,
capped by a sliding window). The engine-independent physics is the ``ideal`` engine."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.analyzers import kv_memory as judge
from workbench.config import DecoderConfig
from workbench.errors import PlanError
from workbench.memory import dtypes, params
from workbench.memory import planner as kv
from workbench.settings import get_architecture, get_device, load_profile

GIB = 2**30


@pytest.fixture(scope="module")
def llama8b() -> DecoderConfig:
    return get_architecture("llama-3.1-8b")


@pytest.fixture(scope="module")
def h100():
    return get_device("h100-sxm")


def tiny(**changes) -> DecoderConfig:
    base = DecoderConfig(
        vocab_size=1000, d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, d_head=32,
        d_mlp=512, max_positions=4096, dtype="bfloat16", name="tiny",
    )  # fmt: skip
    return base.replace(**changes)


# --- published shapes ---------------------------------------------------------------------


def test_llama_3_1_8b_bf16_is_128_kib_per_token_and_16_gib_at_128k(llama8b):
    assert kv.kv_bytes_per_token(llama8b, "bf16") == 131_072  # 2 * 32 * 8 * 128 * 2
    assert kv.kv_cache_bytes(llama8b, 131_072, kv_dtype="bf16") == 17_179_869_184
    assert kv.kv_cache_bytes(llama8b, 131_072, kv_dtype="bf16", block_size=16) == 16 * GIB
    assert kv.kv_bytes_per_token(llama8b) == 131_072  # default: the model's bf16


def test_fp8_halves_and_fp32_doubles_the_cache(llama8b):
    bf16 = kv.kv_cache_bytes(llama8b, 131_072, kv_dtype="bf16")
    assert kv.kv_cache_bytes(llama8b, 131_072, kv_dtype="fp8") * 2 == bf16
    assert kv.kv_cache_bytes(llama8b, 131_072, kv_dtype="float32") == 2 * bf16
    assert kv.kv_bytes_per_token(llama8b, "int4") == 131_072 // 4
    assert kv.kv_bytes_per_token(llama8b, "q8_0") == 32 * (2 * 8 * 128) // 32 * 34  # 8.5 bits


def test_mistral_sliding_window_caps_the_cache_at_the_window():
    mistral = get_architecture("mistral-7b")
    per_token = kv.kv_bytes_per_token(mistral)
    assert mistral.sliding_window == 4096 and per_token == 131_072
    assert kv.kv_cache_bytes(mistral, 2048) == 2048 * per_token
    assert kv.kv_cache_bytes(mistral, 4096) == 4096 * per_token
    for context in (4097, 32_768, 1_000_000):
        assert kv.kv_cache_bytes(mistral, context) == 4096 * per_token
    unwindowed = mistral.replace(sliding_window=None)
    assert kv.kv_cache_bytes(unwindowed, 32_768) == 32_768 * per_token


def test_mha_gqa_mqa_differ_by_the_head_ratio():
    mha, gqa, mqa = (tiny(n_kv_heads=k) for k in (8, 2, 1))
    assert (mha.attention_kind, gqa.attention_kind, mqa.attention_kind) == ("MHA", "GQA", "MQA")
    assert kv.kv_bytes_per_token(mha) == 2 * 4 * 8 * 32 * 2
    assert kv.kv_bytes_per_token(mha) == 4 * kv.kv_bytes_per_token(gqa)
    assert kv.kv_bytes_per_token(gqa) == 2 * kv.kv_bytes_per_token(mqa)


def test_deepseek_v3_mla_caches_one_latent_per_layer():
    deepseek = get_architecture("deepseek-v3")
    assert deepseek.attention_kind == "MLA"
    assert kv.kv_bytes_per_token(deepseek, "bf16") == 61 * (512 + 64) * 2 == 70_272
    # the latent is shared by all heads, so tensor parallelism replicates it
    assert kv.kv_bytes_per_token(deepseek, "bf16", tp=8) == 70_272




def test_per_layer_windows_cap_only_those_layers():
    gemma = get_architecture("gemma-2-9b")
    layered = gemma.replace(
        sliding_window=4096, sliding_layers=tuple(range(0, 42, 2))
    )
    per_layer = 2 * 8 * 256 * 2
    assert kv.window_layer_count(layered) == 21
    assert kv.kv_cache_bytes(layered, 8192) == per_layer * (21 * 8192 + 21 * 4096)
    # the shipped profile is conservative (all layers global) or exact, never an underestimate
    shipped = kv.kv_cache_bytes(gemma, 8192)
    assert shipped in (per_layer * 42 * 8192, per_layer * (21 * 8192 + 21 * 4096))


# --- parameters and weights ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "mistral-7b", "mixtral-8x7b",
             "smollm2-135m"],
)  # fmt: skip
def test_count_params_matches_the_published_count(name):
    config = get_architecture(name)
    assert config.n_params is not None
    assert params.count_params(config) == config.n_params


def test_count_params_gemma_2_misses_only_its_sandwich_norms():
    for name in ("gemma-2-9b", "gemma-2-27b"):
        gemma = get_architecture(name)
        assert params.count_params(gemma) + 2 * gemma.d_model * gemma.n_layers == gemma.n_params


def test_count_params_gpt2_small_with_biases_learned_positions_and_layernorm():
    gpt2 = DecoderConfig(
        vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_head=64, d_mlp=3072,
        max_positions=1024, positions="learned", norm="layernorm", activation="gelu_tanh",
        gated_mlp=False, qkv_bias=True, attn_out_bias=True, mlp_bias=True, tie_embeddings=True,
    )  # fmt: skip
    assert params.count_params(gpt2) == 124_439_808


@pytest.mark.parametrize(
    ("dtype", "bits"),
    [("F32", 32), ("F16", 16), ("bf16", 16), ("int8", 8), ("int4", 4), ("Q4_0", 4.5),
     ("Q4_1", 5.0), ("Q5_0", 5.5), ("Q5_1", 6.0), ("Q8_0", 8.5), ("Q2_K", 2.625),
     ("Q3_K", 3.4375), ("Q4_K", 4.5), ("Q5_K", 5.5), ("Q6_K", 6.5625)],
)  # fmt: skip
def test_storage_types_have_the_published_bits_per_weight(dtype, bits):
    assert dtypes.storage_bytes(256 * 1000, dtype) * 8 == bits * 256 * 1000


def test_weights_bytes_llama_8b(llama8b):
    assert params.weights_bytes(llama8b) == 2 * 8_030_261_248
    assert params.weights_bytes(llama8b, "Q4_0") == 8_030_261_248 // 32 * 18
    assert params.weights_bytes(llama8b.replace(weights_quant="Q4_0")) == 8_030_261_248 // 32 * 18
    assert params.weights_bytes(llama8b, tp=2) == 8_030_261_248
    with pytest.raises(PlanError, match="'q4_k'"):
        params.weights_bytes(llama8b, "q4k")


# --- plans: fit, limits, tensor parallelism -----------------------------------------------


def test_plan_llama_8b_batch_5_full_context_on_h100_ideal(llama8b, h100):
    result = kv.plan(llama8b, h100, batch=5, context=131_072, engine="ideal")
    assert result.engine == "ideal" and result.block_size == 1 and result.utilization == 1.0
    assert result.kv_bytes == 80 * GIB  # 5 x 128 KiB x 131,072
    assert result.weights_bytes == 2 * 8_030_261_248
    assert result.memory_basis == "cuda" and result.device_memory_bytes == h100.cuda_memory_bytes
    assert result.device_bytes == h100.cuda_memory_bytes  # utilization 1.0 of what CUDA reports
    assert result.total_bytes == (
        result.weights_bytes + result.kv_bytes + result.activation_bytes + result.non_torch_bytes
    )
    assert not result.fits and result.model_max_positions == 131_072
    # 79.18 GiB - 14.96 GiB of weights leaves 64.2 GiB: four full-context requests, not five
    assert 0 < result.max_context < 131_072 and result.max_batch == 4
    assert result.max_context_reason == "memory"
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    for key in ("kv_bytes_per_token", "kv_bytes", "weights_bytes", "device_bytes", "fits",
                "max_context", "max_batch", "engine", "max_concurrency"):  # fmt: skip
        assert key in data


@pytest.mark.parametrize(
    ("name", "device", "batch", "context", "options"),
    [("llama-3.1-8b", "h100-sxm", 4, 131_072, {}),
     ("llama-3.1-8b", "l4", 1, 8192, {"kv_dtype": "fp8"}),
     ("llama-3.1-70b", "h100-sxm", 8, 32_768, {"tp": 4}),
     ("qwen-2.5-72b", "mi300x", 2, 32_768, {"block_size": 1, "engine": "ideal"}),
     ("mixtral-8x7b", "a100-80gb", 3, 16_384, {"tp": 2, "utilization": 0.8}),
     ("gemma-2-9b", "a100-40gb", 2, 8192, {"kv_dtype": "fp8"})],
)  # fmt: skip
def test_max_context_and_max_batch_are_the_largest_that_fit(name, device, batch, context, options):
    config, target = get_architecture(name), get_device(device)
    result = kv.plan(config, target, batch=batch, context=context, **options)
    assert result.max_context is not None and result.max_context >= 1
    assert kv.plan(config, target, batch=batch, context=result.max_context, **options).fits
    if result.max_context < config.max_positions:
        assert result.max_context_reason == "memory"
        assert not kv.plan(config, target, batch=batch, context=result.max_context + 1, **options).fits
    else:
        assert result.max_context_reason == "model limit"
    assert result.max_batch >= 1
    assert kv.plan(config, target, batch=result.max_batch, context=context, **options).fits
    assert not kv.plan(config, target, batch=result.max_batch + 1, context=context, **options).fits


def test_max_context_is_a_whole_number_of_blocks_when_kv_dominates(llama8b, h100):
    result = kv.plan(llama8b, h100, batch=4, context=131_072)
    assert result.block_size == 16 and result.max_context % 16 == 0
    assert not kv.plan(llama8b, h100, batch=4, context=result.max_context + 1).fits


def test_sliding_window_everywhere_leaves_context_unbounded_past_the_limit(h100):
    mistral = get_architecture("mistral-7b")
    result = kv.plan(mistral, h100, batch=1, context=32_768, engine="ideal")
    assert result.fits and result.max_context == 32_768 and result.max_context_reason == "model limit"
    assert result.kv_bytes == 4096 * 131_072
    beyond = kv.plan(mistral, h100, batch=1, context=65_536, engine="ideal", allow_long_context=True)
    assert beyond.max_context is None and beyond.max_context_reason == "windows"
    assert beyond.beyond_model_limit


def test_weights_that_do_not_fit_leave_no_context_or_batch(h100):
    result = kv.plan(get_architecture("llama-3.1-405b"), h100, batch=1, context=1024)
    assert not result.fits and result.max_context == 0 and result.max_batch == 0
    assert result.kv_budget_bytes < 0 and result.max_concurrency == 0.0


def test_tensor_parallel_splits_weights_and_kv_heads_and_replicates_beyond(llama8b):
    assert kv.kv_bytes_per_token(llama8b, tp=2) == 131_072 // 2
    assert kv.kv_bytes_per_token(llama8b, tp=8) == 131_072 // 8  # one kv head per device
    assert kv.kv_bytes_per_token(llama8b, tp=16) == 131_072 // 8  # 8 kv heads, 16 devices
    one, two = (kv.plan(llama8b, 80 * GIB, batch=1, context=8192, tp=t, engine="ideal") for t in (1, 2))
    assert two.weights_bytes * 2 == one.weights_bytes and two.kv_bytes * 2 == one.kv_bytes
    with pytest.raises(PlanError, match="divide n_heads"):
        kv.plan(llama8b, 80 * GIB, batch=1, context=8192, tp=3)


def test_risk_levels_follow_the_thresholds():
    assert [judge.risk_level(f) for f in (0.0, 0.6999, 0.70, 0.8999, 0.90, 1.0, 1.0001)] == [
        "low", "low", "medium", "medium", "high", "high", "oom",
    ]  # fmt: skip
    assert judge.risk_level(0.75, {"medium_fraction": 0.8}) == "low"
    with pytest.raises(PlanError, match="hihg_fraction"):
        judge.risk_level(0.5, {"hihg_fraction": 0.8})


def test_default_profile_holds_the_kv_thresholds():
    # written once, in default.toml: the analyzer's defaults are the profile's values
    assert load_profile().thresholds["kv_memory"] == judge.resolve_thresholds(None)


# --- findings -----------------------------------------------------------------------------


def by_check(findings):
    return {finding.check: finding for finding in findings}


def test_analyze_fails_and_names_a_concrete_fix(llama8b, h100):
    findings = by_check(judge.analyze(llama8b, h100, 4, 131_072))
    assert all(f.analyzer == "kv_memory" for f in findings.values())
    fits = findings["fits"]
    limit = kv.plan(llama8b, h100, batch=4, context=131_072).max_context
    assert fits.status == "fail" and fits.value > 1.0 and fits.threshold == 1.0
    assert "vLLM" in fits.message and "maximum concurrency for 131,072 tokens per request" in fits.message
    assert f"at batch 4 the largest context that fits is {limit:,} tokens" in fits.fix
    assert "fp8 KV cache" in fits.fix and "--tp 2" in fits.fix
    assert findings["max_context"].status == "info"
    assert findings["max_context"].value == limit


def test_analyze_oversize_is_the_callers_status(llama8b, h100):
    """diagnose passes the profile's oversize ("warn" by default); workbench kv keeps fail."""
    findings = by_check(judge.analyze(llama8b, h100, 4, 131_072, oversize="warn"))
    assert findings["fits"].status == "warn" and findings["fits"].fix


def test_analyze_passes_a_small_model(h100):
    findings = by_check(judge.analyze(get_architecture("smollm2-135m"), h100, 1, 8192))
    assert findings["fits"].status == "pass" and findings["fits"].fix is None
    assert findings["max_context"].status == "pass"
    assert findings["context_within_model"].status == "pass"


def test_analyze_warns_at_high_risk_and_beyond_max_positions():
    config = tiny()
    options = {"utilization": 1.0, "engine": "ideal", "allow_long_context": True}
    total = kv.plan(config, 10 * GIB, batch=1, context=8192, **options).total_bytes
    device = int(total / 0.95)  # 95% of the budget: fits, but above high_fraction
    findings = by_check(judge.analyze(config, device, 1, 8192, **options))
    assert findings["fits"].status == "warn" and findings["fits"].fix
    assert findings["fits"].value == pytest.approx(0.95, rel=1e-6)
    assert findings["context_within_model"].status == "warn"


# --- properties ---------------------------------------------------------------------------


@st.composite
def configs(draw):
    kv_heads = draw(st.integers(1, 4))
    return tiny(
        n_layers=draw(st.integers(1, 8)),
        n_kv_heads=kv_heads,
        n_heads=kv_heads * draw(st.integers(1, 4)),
        d_head=2 * draw(st.integers(1, 32)),
    )


tokens = st.integers(0, 50_000)
KV_DTYPES = ["fp32", "bf16", "fp8", "int4"]  # strictly decreasing bytes


@settings(max_examples=40, deadline=None)
@given(configs(), tokens, tokens, st.integers(1, 4))
def test_kv_bytes_are_linear_in_tokens_without_a_window(config, a, b, batch):
    per_token = kv.kv_bytes_per_token(config)
    assert kv.kv_cache_bytes(config, a + b, batch=batch) == batch * (a + b) * per_token
    assert kv.kv_cache_bytes(config, a + b) == kv.kv_cache_bytes(config, a) + kv.kv_cache_bytes(config, b)


@settings(max_examples=40, deadline=None)
@given(configs(), tokens, st.integers(1, 64))
def test_paged_blocks_round_tokens_up(config, context, block):
    rounded = -(-context // block) * block
    paged = kv.kv_cache_bytes(config, context, block_size=block)
    assert paged == kv.kv_cache_bytes(config, rounded)
    assert kv.kv_cache_bytes(config, context) <= paged


@settings(max_examples=40, deadline=None)
@given(configs(), tokens, st.sampled_from(["n_layers", "n_kv_heads", "d_head", "batch", "dtype"]))
def test_kv_bytes_are_monotone_in_every_size(config, context, size):
    def cache(cfg, batch=1, dtype="bf16"):
        return kv.kv_cache_bytes(cfg, context, batch=batch, kv_dtype=dtype)

    if size == "n_layers":
        smaller, larger = cache(config), cache(config.replace(n_layers=config.n_layers + 1))
    elif size == "n_kv_heads":
        group = config.n_heads // config.kv_heads
        wider = config.replace(n_kv_heads=config.kv_heads + 1, n_heads=(config.kv_heads + 1) * group)
        smaller, larger = cache(config), cache(wider)
    elif size == "d_head":
        smaller, larger = cache(config), cache(config.replace(d_head=config.d_head + 2))
    elif size == "batch":
        smaller, larger = cache(config, batch=2), cache(config, batch=3)
    else:
        sizes = [cache(config, dtype=dtype) for dtype in KV_DTYPES]
        assert sizes == sorted(sizes, reverse=True)
        smaller, larger = sizes[-1], sizes[0]
    assert smaller <= larger
    assert (smaller < larger) == (context > 0)


@settings(max_examples=40, deadline=None)
@given(configs(), tokens, st.integers(1, 8192), st.integers(1, 4))
def test_a_sliding_window_caps_the_cache(config, context, window, batch):
    windowed = config.replace(sliding_window=window)
    per_token = kv.kv_bytes_per_token(config)
    cached = kv.kv_cache_bytes(windowed, context, batch=batch)
    assert cached == batch * min(context, window) * per_token
    assert cached <= kv.kv_cache_bytes(config, context, batch=batch)
    assert cached <= batch * window * per_token
