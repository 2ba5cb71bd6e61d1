"""The vLLM engine table against vLLM's own start-up figures and rules.

The published figures are vLLM's start-up log for meta-llama/Llama-3.1-8B (bf16) on one H100
80GB at its defaults (quoted in issue #11): CUDA reports 79.18 GiB, weights 14.99 GiB, torch
activation peak 4.76 GiB, 0.13 GiB outside torch, 51.38 GiB left for the KV cache at 0.9.
The activation model's one constant is calibrated on that log (profiles/engines/vllm.toml), so
the peak test checks the chain (formula, constant, scheduler defaults), not an independent
measurement; weights, the budget arithmetic and the concurrency are independent of it.
"""

from __future__ import annotations

import shutil

import pytest

from workbench.errors import PlanError
from workbench.memory import engines, planner
from workbench.memory.params import count_params, weights_bytes
from workbench.settings import get_architecture, get_device

GIB = 2**30
TOLERANCE = 0.03  # the bar; the published figures are rounded to 0.01 GiB


@pytest.fixture(scope="module")
def llama8b():
    return get_architecture("llama-3.1-8b")


@pytest.fixture(scope="module")
def h100():
    return get_device("h100-sxm")


@pytest.mark.parametrize(
    ("field", "published_gib"),
    [("device_memory_bytes", 79.18), ("weights_bytes", 14.99), ("activation_bytes", 4.76),
     ("non_torch_bytes", 0.13), ("kv_budget_bytes", 51.38)],
)  # fmt: skip
def test_llama_3_1_8b_on_h100_reproduces_vllms_startup_figures(llama8b, h100, field, published_gib):
    result = planner.plan(llama8b, h100, batch=1, context=8192)
    assert result.engine == "vllm" and result.memory_basis == "cuda"
    assert (result.max_num_batched_tokens, result.max_num_seqs, result.block_size) == (8192, 1024, 16)
    assert getattr(result, field) / GIB == pytest.approx(published_gib, rel=TOLERANCE)


def test_llama_3_1_8b_concurrency_is_what_vllm_prints(llama8b, h100):
    """51.38 GiB / 1 GiB per 8,192-token request: vLLM logs about 51x; the old planner said 25."""
    result = planner.plan(llama8b, h100, batch=1, context=8192)
    assert result.kv_bytes_per_request == 8192 * 131_072
    assert result.max_concurrency == pytest.approx(51.38, rel=TOLERANCE)
    assert result.max_batch == int(result.max_concurrency)
    assert result.kv_capacity_tokens == result.kv_blocks * 16
    assert result.kv_capacity_tokens == pytest.approx(51.38 * 8192, rel=TOLERANCE)


def test_activation_peak_does_not_grow_with_concurrency_or_context(llama8b, h100):
    small = planner.plan(llama8b, h100, batch=1, context=1024)
    large = planner.plan(llama8b, h100, batch=40, context=8192)
    assert small.activation_bytes == large.activation_bytes
    whole = [planner.plan(llama8b, h100, batch=b, context=1024, engine="workbench").activation_bytes
             for b in (1, 2)]  # fmt: skip
    assert whole[1] == 2 * whole[0]  # the workbench's own forward holds every position


def test_the_largest_context_is_capped_at_the_models_limit(llama8b, h100):
    result = planner.plan(llama8b, h100, batch=1, context=131_072)
    assert result.fits and result.max_context == 131_072
    assert result.max_context_reason == "model limit"
    tight = planner.plan(llama8b, h100, batch=8, context=131_072)
    assert tight.max_context_reason == "memory" and tight.max_context < 131_072


def test_a_context_past_the_limit_is_refused_unless_allowed(llama8b, h100):
    with pytest.raises(PlanError, match="past the model's limit of 131,072.*--allow-long-context"):
        planner.plan(llama8b, h100, batch=1, context=200_000)
    allowed = planner.plan(llama8b, h100, batch=1, context=200_000, allow_long_context=True)
    assert allowed.beyond_model_limit and allowed.kv_bytes == 200_000 * 131_072


def test_sliding_window_layers_reserve_window_minus_one_plus_a_batch(h100):
    mistral = get_architecture("mistral-7b")  # a 4,096-token window on every layer
    page = 131_072 // mistral.n_layers * 16  # one block of one layer
    vllm = planner.plan(mistral, h100, batch=1, context=32_768)
    kept = 4096 - 1 + vllm.max_num_batched_tokens  # 12,287 tokens
    assert vllm.kv_bytes_per_request == mistral.n_layers * page * (-(-kept // 16) + 1)
    ideal = planner.plan(mistral, h100, batch=1, context=32_768, engine="ideal")
    assert ideal.kv_bytes_per_request == 4096 * 131_072  # the window alone
    short = planner.plan(mistral, h100, batch=1, context=1000)  # shorter than the window
    assert short.kv_bytes_per_request == mistral.n_layers * page * (-(-1000 // 16) + 1)


def test_alternating_windows_apply_the_rule_to_half_the_layers(h100):
    gemma = get_architecture("gemma-2-9b")
    assert planner.window_layer_count(gemma) == 21
    result = planner.plan(gemma, h100, batch=1, context=8192)
    page = 2 * 8 * 256 * 2 * 16
    windowed = min(4096 - 1 + result.max_num_batched_tokens, 8192)
    assert result.kv_bytes_per_request == page * (21 * 8192 // 16 + 21 * (-(-windowed // 16) + 1))


def test_scheduler_defaults_follow_the_device(llama8b):
    picks = {name: planner.plan(llama8b, get_device(name), batch=1, context=4096).max_num_batched_tokens
             for name in ("h100-sxm", "mi300x", "a100-80gb", "l4")}  # fmt: skip
    assert picks == {"h100-sxm": 8192, "mi300x": 8192, "a100-80gb": 2048, "l4": 2048}


def test_fp8_weights_keep_embeddings_and_lm_head_in_bf16(llama8b):
    embedding = llama8b.vocab_size * llama8b.d_model
    norms = llama8b.d_model * (2 * llama8b.n_layers + 1)
    kept = 2 * embedding + norms  # untied: embedding and LM head
    expected = 2 * kept + (llama8b.n_params - kept)
    assert weights_bytes(llama8b, "fp8") == expected
    assert weights_bytes(llama8b, "fp8", keep_16bit=()) == llama8b.n_params + norms
    # one byte per parameter (what "--weights-dtype fp8" used to count) misses 0.98 GiB
    assert (weights_bytes(llama8b, "fp8") - llama8b.n_params) / GIB == pytest.approx(0.98, abs=0.005)


def test_deepseek_v3_plans_the_released_fp8_weights():
    deepseek = get_architecture("deepseek-v3")
    result = planner.plan(deepseek, get_device("h200"), batch=1, context=8192, tp=8)
    assert result.weights_dtype == "fp8" and result.kv_dtype == "bf16"
    bf16 = weights_bytes(deepseek, "bf16", tp=8)
    assert 0.49 < (result.weights_bytes - engines.rope_cache_bytes(engines.get_engine("vllm"), deepseek)) / bf16 < 0.51
    assert count_params(deepseek) > 0 and result.attention_kind == "MLA"


@pytest.mark.parametrize("kv_dtype", ["int8", "int4", "q8_0"])
def test_vllm_has_no_integer_kv_cache_but_the_ideal_engine_does(llama8b, h100, kv_dtype):
    with pytest.raises(PlanError, match=f"the vllm engine has no {kv_dtype} KV cache"):
        planner.plan(llama8b, h100, batch=1, context=8192, kv_dtype=kv_dtype)
    ideal = planner.plan(llama8b, h100, batch=1, context=8192, kv_dtype=kv_dtype, engine="ideal")
    assert ideal.kv_bytes < planner.plan(llama8b, h100, batch=1, context=8192, engine="ideal").kv_bytes


def test_auto_kv_dtype_is_the_models_dtype(llama8b, h100):
    assert planner.plan(llama8b, h100, batch=1, context=8192, kv_dtype="auto").kv_dtype == "bf16"


def test_kv_heads_that_do_not_shard_are_refused_for_vllm(h100):
    twelve = get_architecture("llama-3.1-8b").replace(n_heads=48, n_kv_heads=12)
    with pytest.raises(PlanError, match="cannot shard 12 KV heads over --tp 8"):
        planner.plan(twelve, h100, batch=1, context=8192, tp=8)
    assert planner.plan(twelve, h100, batch=1, context=8192, tp=4).tp == 4  # 12 / 4 = 3 each
    replicated = planner.plan(twelve, h100, batch=1, context=8192, tp=8, engine="ideal")
    assert replicated.kv_bytes_per_token == 32 * 2 * 2 * 128 * 2  # ceil(12 / 8) = 2 heads each


def test_another_engine_is_another_table(llama8b, h100, tmp_path, monkeypatch):
    folder = tmp_path / "engines"
    shutil.copytree(engines.engines_dir(), folder)
    text = (folder / "vllm.toml").read_text().replace("block_size = 16", "block_size = 32")
    (folder / "paged32.toml").write_text(text.replace('name = "vllm"', 'name = "paged32"'))
    monkeypatch.setattr(engines, "engines_dir", lambda: folder)
    assert "paged32" in engines.list_engines()
    result = planner.plan(llama8b, h100, batch=1, context=1000, engine="paged32")
    assert result.engine == "paged32" and result.block_size == 32
    assert result.kv_bytes_per_request == 1024 * 131_072  # 1,000 tokens in 32 blocks of 32


def test_devices_without_a_cuda_figure_say_they_are_nominal(llama8b):
    result = planner.plan(llama8b, get_device("a10g"), batch=1, context=4096)
    assert result.memory_basis == "nominal" and result.device_memory_bytes == 24 * GIB
    assert planner.plan(llama8b, get_device("t4"), batch=1, context=4096).memory_basis == "cuda"


def test_a_misspelt_engine_key_is_an_error_naming_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "engines"
    folder.mkdir()
    text = (engines.engines_dir() / "vllm.toml").read_text().replace("block_size = 16", "blok_size = 16")
    (folder / "typo.toml").write_text(text)
    monkeypatch.setattr(engines, "engines_dir", lambda: folder)
    with pytest.raises(PlanError, match=r"typo.toml: unknown key 'blok_size'"):
        engines.get_engine("typo")
