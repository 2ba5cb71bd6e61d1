"""Keys missing from config.json mean what transformers' config class for that model_type says
(issue 14), measured against transformers in the test, never restated here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import workbench
from workbench.loading.families import config_from_hf

pytestmark = pytest.mark.usefixtures("single_thread")

# The keys a minimal config.json gives: sizes only. Everything else is left to the defaults.
_SIZES = dict(vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=8)
MINIMAL = {
    "llama": _SIZES,
    "mistral": _SIZES,
    "qwen2": {**_SIZES, "num_attention_heads": 32, "hidden_size": 256},  # Qwen2's default is 32 KV heads
    "mixtral": _SIZES,
    "qwen2_moe": {**_SIZES, "num_attention_heads": 16, "hidden_size": 128},  # default 16 KV heads
    "gpt2": dict(vocab_size=96, n_embd=64, n_layer=2, n_head=8),
    "bloom": dict(vocab_size=96, hidden_size=64, n_layer=2, n_head=8),
}


def _rope_theta(hf_config) -> float | None:
    params = getattr(hf_config, "rope_parameters", None) or {}
    return params.get("rope_theta")


def _window(hf_config) -> int | None:
    """The window transformers' attention applies (None: full attention)."""
    window = getattr(hf_config, "sliding_window", None)
    if hf_config.model_type in ("qwen2", "qwen2_moe") and not getattr(hf_config, "use_sliding_window", False):
        return None
    return window


@pytest.mark.parametrize("model_type", list(MINIMAL))
def test_missing_keys_take_transformers_defaults(model_type: str, tmp_path) -> None:
    from transformers import AutoConfig

    hf = {"model_type": model_type, **MINIMAL[model_type]}
    ours = config_from_hf(hf, tmp_path / "config.json")
    theirs = AutoConfig.for_model(model_type, **MINIMAL[model_type])
    assert ours.n_layers == theirs.num_hidden_layers
    assert ours.vocab_size == theirs.vocab_size
    assert ours.tie_embeddings == theirs.tie_word_embeddings
    assert ours.norm_eps == getattr(theirs, "rms_norm_eps", getattr(theirs, "layer_norm_epsilon", None))
    if model_type in ("gpt2", "bloom"):
        return
    assert ours.kv_heads == theirs.num_key_value_heads
    assert ours.max_positions == theirs.max_position_embeddings
    assert ours.rope_theta == _rope_theta(theirs)
    assert ours.sliding_window == _window(theirs)
    if model_type in ("mixtral", "qwen2_moe"):
        assert ours.n_experts == getattr(theirs, "num_local_experts", getattr(theirs, "num_experts", None))
        assert ours.top_k == theirs.num_experts_per_tok
        assert ours.norm_topk_prob == getattr(theirs, "norm_topk_prob", True)


def test_mistral_defaults_are_the_ones_the_issue_names(tmp_path) -> None:
    """The two cases the issue met, stated from transformers' own class for the reader."""
    from transformers import MistralConfig

    ours = config_from_hf({"model_type": "mistral", **_SIZES}, tmp_path / "config.json")
    assert ours.kv_heads == MistralConfig().num_key_value_heads == 8
    assert ours.sliding_window == MistralConfig().sliding_window == 4096
    assert ours.window_for_layer(0) == 4096


def test_an_explicit_null_is_not_replaced_by_a_default(tmp_path) -> None:
    ours = config_from_hf({"model_type": "mistral", **_SIZES, "sliding_window": None}, tmp_path / "config.json")
    assert ours.sliding_window is None


def test_mistral_folder_without_optional_keys_matches_transformers_logits(tmp_path) -> None:
    """A Mistral folder whose config.json lacks num_key_value_heads, sliding_window and rope_theta:
    transformers fills them from its defaults; so must the loader, to the same logits."""
    from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    MistralForCausalLM(MistralConfig(**_SIZES, max_position_embeddings=64)).save_pretrained(tmp_path)
    path: Path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    for key in ("num_key_value_heads", "sliding_window", "rope_parameters", "rope_theta", "rms_norm_eps"):
        data.pop(key, None)
    path.write_text(json.dumps(data))
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    model = workbench.load_model(tmp_path)
    tokens = torch.randint(3, 96, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(tokens).logits
        got = model(tokens)
    assert model.config.kv_heads == reference.config.num_key_value_heads
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
