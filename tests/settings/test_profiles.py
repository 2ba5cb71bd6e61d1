"""Tests of workbench.settings: the device catalog, architecture profiles, run-profile merging,
and the errors (file:line for bad TOML, the key and file for unknown keys, closest names)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workbench.config import DecoderConfig
from workbench.settings import (
    ProfileError,
    get_architecture,
    get_architecture_profile,
    get_device,
    host_memory_bytes,
    list_architectures,
    list_devices,
    list_profiles,
    load_profile,
    profiles_dir,
)

GIB = 2**30
REQUIRED_DEVICES = [
    "h100-sxm", "h100-pcie", "h200", "a100-40gb", "a100-80gb", "l40s", "l4", "a10g", "t4",
    "rtx4090", "rtx3090", "mi300x", "cpu",
]  # fmt: skip
REQUIRED_ARCHITECTURES = [
    "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "mistral-7b", "mixtral-8x7b",
    "gemma-2-9b", "gemma-2-27b", "qwen-2.5-72b", "deepseek-v3", "smollm2-135m",
]  # fmt: skip


# --- devices ------------------------------------------------------------------------------


def test_catalog_lists_the_required_devices():
    assert set(REQUIRED_DEVICES) <= set(list_devices())


@pytest.mark.parametrize("name", [d for d in REQUIRED_DEVICES if d != "cpu"])
def test_gpu_memory_is_the_stated_figure_in_gib(name):
    device = get_device(name)
    stated = int(re.match(r"(\d+) GB", device.memory_stated)[1])
    assert device.memory_bytes == stated * GIB
    assert device.bandwidth_bytes_per_second and device.bandwidth_bytes_per_second > 1e11
    assert device.peak_16bit_flops_per_second > device.fp32_flops_per_second > 1e12
    assert "datasheet" in device.source or "whitepaper" in device.source


def test_known_vendor_figures():
    assert get_device("h100-sxm").memory_bytes == 80 * GIB
    assert get_device("h200").memory_bytes == 141 * GIB
    assert get_device("mi300x").memory_bytes == 192 * GIB
    assert get_device("h100-sxm").bandwidth_bytes_per_second == 3_350_000_000_000
    assert get_device("a100-80gb").peak_16bit_flops_per_second == 312e12
    assert get_device("t4").bf16 is False


def test_cpu_is_this_hosts_memory():
    cpu = get_device("cpu")
    assert cpu.memory_bytes == host_memory_bytes() > 0
    assert cpu.bandwidth_bytes_per_second is None


def test_device_names_are_case_insensitive_and_have_aliases():
    assert get_device("H100-SXM").name == "h100-sxm"
    assert get_device("h100").name == "h100-sxm"


def test_unknown_device_suggests_the_closest_name():
    with pytest.raises(ProfileError, match=r"unknown device 'h100-sxn'; did you mean 'h100-sxm'"):
        get_device("h100-sxn")
    with pytest.raises(ProfileError) as error:
        get_device("a100-80")
    assert "'a100-80gb'" in str(error.value) and "\n" not in str(error.value)


# --- architectures ------------------------------------------------------------------------


def test_all_required_architectures_load():
    assert set(REQUIRED_ARCHITECTURES) <= set(list_architectures())
    for name in REQUIRED_ARCHITECTURES:
        config = get_architecture(name)
        assert isinstance(config, DecoderConfig) and config.name == name
        assert get_architecture_profile(name).source


def test_llama_3_1_shapes():
    small, large, huge = (get_architecture(f"llama-3.1-{s}") for s in ("8b", "70b", "405b"))
    assert (small.n_layers, small.d_model, small.n_heads, small.kv_heads, small.d_head) == (
        32, 4096, 32, 8, 128,
    )  # fmt: skip
    assert (small.d_mlp, small.vocab_size, small.max_positions) == (14336, 128256, 131072)
    assert small.rope_scaling.kind == "llama3" and small.trained_context == 8192
    assert (large.n_layers, large.d_model, large.n_heads, large.kv_heads, large.d_mlp) == (
        80, 8192, 64, 8, 28672,
    )  # fmt: skip
    assert (huge.n_layers, huge.d_model, huge.n_heads, huge.kv_heads, huge.d_mlp) == (
        126, 16384, 128, 8, 53248,
    )  # fmt: skip


def test_mistral_mixtral_deepseek_shapes():
    mistral, mixtral = get_architecture("mistral-7b"), get_architecture("mixtral-8x7b")
    assert mistral.sliding_window == 4096 and mixtral.sliding_window is None
    assert (mixtral.n_experts, mixtral.top_k) == (8, 2)
    deepseek = get_architecture_profile("deepseek-v3")
    assert (deepseek.config.mla_kv_rank, deepseek.config.mla_rope_dim) == (512, 64)
    assert deepseek.config.moe_layers == tuple(range(3, 61))
    assert deepseek.extras["q_lora_rank"] == 1536


def test_gemma_2_alternation_is_kept_and_never_understated():
    gemma = get_architecture_profile("gemma-2-9b")
    assert gemma.config.sliding_layers == tuple(range(0, 42, 2))
    assert gemma.config.sliding_window == 4096
    assert gemma.config.window_for_layer(0) == 4096 and gemma.config.window_for_layer(1) is None


def test_architecture_by_hugging_face_id_and_closest_name():
    assert get_architecture("meta-llama/Llama-3.1-8B").name == "llama-3.1-8b"
    with pytest.raises(ProfileError, match="did you mean 'llama-3.1-8b'"):
        get_architecture("lama-3.1-8b")


# --- run profiles -------------------------------------------------------------------------


def test_default_and_ci_profiles():
    assert {"default", "ci"} <= set(list_profiles())
    default, ci = load_profile(), load_profile("ci")
    # "auto": the engine's own defaults (vLLM: 0.9 and 16-token blocks)
    assert default.deployment.utilization is None and default.deployment.block_size is None
    assert default.deployment.engine == "vllm" and default.deployment.oversize == "warn"
    assert default.deployment.context is None  # "max": the model's max_positions
    assert get_device(default.deployment.device).name == default.deployment.device
    assert max(ci.probes["lengths"]) < max(default.probes["lengths"])
    assert ci.thresholds == default.thresholds and ci.seed == default.seed
    for analyzer in ("attention_saturation", "routing_collapse", "length_extrapolation"):
        assert default.thresholds[analyzer]
    for analyzer, sources in default.threshold_sources.items():
        assert set(sources) == set(default.thresholds[analyzer])
        assert all(sources.values())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "custom.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_override_merges_over_default(tmp_path):
    path = write(tmp_path, "[thresholds.kv_memory]\nhigh_fraction = 0.8\n[deployment]\nbatch = 8\n")
    profile = load_profile(path)
    assert profile.thresholds["kv_memory"] == {"medium_fraction": 0.70, "high_fraction": 0.8}
    assert str(path) in profile.threshold_sources["kv_memory"]["high_fraction"]
    assert profile.deployment.batch == 8 and profile.deployment.tp == 1
    assert profile.probes == load_profile().probes


def test_invalid_toml_names_file_and_line(tmp_path):
    path = write(tmp_path, 'name = "x"\n\n[run]\nseed = = 3\n')
    with pytest.raises(ProfileError, match=rf"^{re.escape(str(path))}:4: ") as error:
        load_profile(path)
    assert "\n" not in str(error.value)


def test_unknown_threshold_key_names_key_file_and_line(tmp_path):
    path = write(tmp_path, "[thresholds.kv_memory]\nmedium_fraction = 0.6\nhigh_fractoin = 0.8\n")
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    message = str(error.value)
    assert message.startswith(f"{path}:3: ")
    assert "'high_fractoin'" in message and "did you mean 'high_fraction'" in message


def test_unknown_analyzer_and_wrong_types_are_errors(tmp_path):
    with pytest.raises(ProfileError, match="did you mean 'kv_memory'"):
        load_profile(write(tmp_path, "[thresholds.kv_memroy]\nhigh_fraction = 0.8\n"))
    with pytest.raises(ProfileError, match=r":2: .*high_fraction must be a number"):
        load_profile(write(tmp_path, '[thresholds.kv_memory]\nhigh_fraction = "lots"\n'))
    with pytest.raises(ProfileError, match=r":2: .*utilization"):
        load_profile(write(tmp_path, "[deployment]\nutilization = 1.5\n"))
    with pytest.raises(ProfileError, match=r":2: .*did you mean 'h100-sxm'"):
        load_profile(write(tmp_path, '[deployment]\ndevice = "h100-sxn"\n'))


def test_unknown_profile_name_suggests_the_closest():
    with pytest.raises(ProfileError, match="did you mean 'default'"):
        load_profile("defualt")


def test_profiles_folder_is_found():
    folder = profiles_dir()
    assert (folder / "devices.toml").is_file() and (folder / "architectures").is_dir()
