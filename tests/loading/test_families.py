"""Every family the loader supports gives transformers' logits (litgpt-style equivalence).

For each family and variant in ``conftest.FAMILY_CASES``: a tiny, randomly initialised
transformers model (fp32) is saved with ``save_pretrained``, loaded with
``workbench.load_model`` and run on a left-padded batch of varied lengths; full logits at every
real (non-pad) position must match, on the SDPA path and on the explicit path.
"""

from __future__ import annotations

import json

import pytest
import torch
from family_checks import load_pair, max_logit_error
from safetensors.torch import load_file

import workbench
from workbench.config import RopeScaling
from workbench.errors import CheckpointError
from workbench.loading import families

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def family_pair(family_case, tmp_path_factory: pytest.TempPathFactory):
    return load_pair(family_case, tmp_path_factory.mktemp(family_case.name))


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_logits_match_transformers(family_case, family_pair, path: str) -> None:
    reference, model = family_pair
    max_logit_error(family_case, reference, model, path)


def test_config_reflects_family(family_case, family_pair) -> None:
    reference, model = family_pair
    config, hf = model.config, reference.config
    assert config.model_type == family_case.model_type
    assert config.vocab_size == hf.vocab_size
    assert config.n_layers == hf.num_hidden_layers
    assert model.n_params() == sum(p.numel() for p in reference.parameters())


EXPECTED_FIELDS = {
    "llama-mqa-tied-bias": dict(
        n_kv_heads=1, tie_embeddings=True, qkv_bias=True, attn_out_bias=True, mlp_bias=True
    ),
    "llama-rope-llama3": dict(rope_scaling=RopeScaling("llama3", 8.0, 16, 1.0, 4.0)),
    "llama-rope-dynamic": dict(rope_scaling=RopeScaling("dynamic", 2.0)),
    "mistral-window": dict(sliding_window=4, sliding_layers=None, qkv_bias=False),
    "qwen2": dict(qkv_bias=True, attn_out_bias=False, sliding_window=None),
    "qwen2-window": dict(sliding_window=4, sliding_layers=(1, 2)),
    "mixtral": dict(n_experts=4, top_k=2, moe_layers=None, norm_topk_prob=True),
    "qwen2_moe": dict(
        n_experts=4,
        top_k=2,
        moe_layers=(0, 2),
        d_expert=16,
        d_shared_expert=24,
        d_mlp=48,
        norm_topk_prob=False,
    ),
    "bloom": dict(positions="alibi", n_heads=6, embed_norm=True, tie_embeddings=True),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_config_fields(name: str, family_cases, tmp_path) -> None:
    family_cases[name].hf_config().save_pretrained(tmp_path)
    config = workbench.load_config(tmp_path)
    for field_name, value in EXPECTED_FIELDS[name].items():
        assert getattr(config, field_name) == value, field_name


# --- checkpoint layouts -----------------------------------------------------------------------

LAYOUT_FAMILIES = ["gpt2", "llama", "mixtral", "qwen2_moe", "bloom", "qwen3_moe", "gemma2", "phi3", "mpt", "deepseek_v3"]


def _write_layout(reference, folder, layout: str) -> None:
    if layout == "sharded-safetensors":
        reference.save_pretrained(folder, max_shard_size="20KB")
        assert (folder / "model.safetensors.index.json").is_file()
        assert len(list(folder.glob("model-*.safetensors"))) > 1
        return
    if layout == "in-memory-state-dict-bin":
        # What torch.save(model.state_dict()) writes: transformers 5 in-memory names, with the
        # experts of MoE models fused into gate_up_proj / down_proj tensors.
        reference.config.save_pretrained(folder)
        torch.save(reference.state_dict(), folder / "pytorch_model.bin")
        return
    # The on-disk names save_pretrained writes, re-packed as the pickles of older checkpoints.
    reference.save_pretrained(folder)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    if layout == "bin":
        torch.save(tensors, folder / "pytorch_model.bin")
        return
    assert layout == "sharded-bin"
    names = sorted(tensors)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    weight_map = {}
    for shard, shard_names in shards.items():
        torch.save({name: tensors[name] for name in shard_names}, folder / shard)
        weight_map.update(dict.fromkeys(shard_names, shard))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("layout", ["sharded-safetensors", "bin", "sharded-bin", "in-memory-state-dict-bin"])
@pytest.mark.parametrize("name", LAYOUT_FAMILIES)
def test_checkpoint_layouts_load(name: str, layout: str, family_cases, tmp_path) -> None:
    case = family_cases[name]
    reference = case.hf_model(seed=2)
    _write_layout(reference, tmp_path, layout)
    max_logit_error(case, reference, workbench.load_model(tmp_path), "sdpa", seed=2)


# --- config.json variants ---------------------------------------------------------------------


def _llama_config_dict(family_cases) -> dict:
    return json.loads(family_cases["llama"].hf_config().to_json_string())


@pytest.mark.parametrize(
    "model_type, kwargs",
    [
        ("qwen2", dict(num_hidden_layers=4, use_sliding_window=True, sliding_window=4, max_window_layers=2)),
        (
            "qwen2_moe",
            dict(
                num_hidden_layers=4,
                use_sliding_window=True,
                sliding_window=4,
                max_window_layers=3,
                num_experts=4,
                num_experts_per_tok=2,
            ),
        ),
        ("qwen2", dict(num_hidden_layers=2, use_sliding_window=False, sliding_window=4)),
    ],
)
def test_sliding_layers_without_layer_types(model_type: str, kwargs: dict, family_cases, tmp_path) -> None:
    """Older configs lack layer_types; the window goes where transformers would put it."""
    import transformers

    hf = transformers.AutoConfig.for_model(model_type, **{**family_cases["llama"].kwargs, **kwargs})
    expected = tuple(i for i, kind in enumerate(hf.layer_types) if kind == "sliding_attention")
    data = json.loads(hf.to_json_string())
    data.pop("layer_types")
    config = families.config_from_hf(data, tmp_path / "config.json")
    use_window = kwargs["use_sliding_window"] and expected
    assert config.sliding_window == (4 if use_window else None)
    assert (config.sliding_layers or ()) == (expected if use_window else ())


def test_legacy_rope_keys_equal_rope_parameters(family_cases, tmp_path) -> None:
    """transformers 4 configs: top-level rope_theta and rope_scaling {"type": ...}."""
    legacy = {k: v for k, v in _llama_config_dict(family_cases).items() if k != "rope_parameters"}
    legacy.update(rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 2.0})
    modern = {**legacy, "rope_parameters": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0}}
    del modern["rope_theta"], modern["rope_scaling"]
    path = tmp_path / "config.json"
    assert families.config_from_hf(legacy, path) == families.config_from_hf(modern, path)
    assert families.config_from_hf(legacy, path).rope_theta == 500000.0


@pytest.mark.parametrize(
    "rope_parameters, message",
    [
        ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}, "longrope"),
        ({"rope_type": "yarn", "factor": 4.0, "truncate": False}, "truncate"),
        ({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}, "partial"),
        ({"rope_type": "linear"}, "factor"),
    ],
)
def test_unsupported_rope_is_refused(rope_parameters: dict, message: str, family_cases, tmp_path) -> None:
    data = _llama_config_dict(family_cases)
    data["rope_parameters"] = {"rope_theta": 10000.0, **rope_parameters}
    with pytest.raises(CheckpointError, match=message) as error:
        families.config_from_hf(data, tmp_path / "config.json")
    assert str(tmp_path / "config.json") in str(error.value)
