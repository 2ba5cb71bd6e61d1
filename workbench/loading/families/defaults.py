"""What config.json means: JSON types checked, and missing keys read from transformers.

A key missing from ``config.json`` means what transformers' config class for that model_type
says (Mistral without ``num_key_value_heads`` has 8 and without ``sliding_window`` a 4096-token
window; Mixtral's RoPE base is 1e6). The defaults are read from the installed transformers,
never restated here. Before that, every key the families read is checked for its JSON type and
range: ``"tie_word_embeddings": "false"`` is not false, and a RoPE base of 0 or a NaN norm eps
is bad input, not a model to run.
"""

from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path
from typing import Any

from workbench.config import MAX_LAYERS
from workbench.errors import CheckpointError

# Keys never filled in from the class: those transformers derives from others at construction
# (their class default was computed for the default sizes, not this checkpoint's), and special
# token ids (tokenizer metadata: GPT-2's default BOS 50256 means nothing in another vocabulary).
_DERIVED = frozenset({"layer_types", "rope_parameters", "rope_scaling", "dtype", "torch_dtype",
                      "bos_token_id", "eos_token_id", "pad_token_id"})

POSITIVE_INTS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "intermediate_size", "max_position_embeddings", "n_embd", "n_head", "n_layer", "n_inner",
    "n_positions", "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
)  # not sliding_window: qwen2_moe writes 0 when the window is off
BOOLEANS = (
    "tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window", "norm_topk_prob", "qkv_bias",
    "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "apply_residual_connection_post_layernorm",
)
# Norm epsilons may be 0 (a norm without eps); RoPE bases must be > 0.
NON_NEGATIVE_NUMBERS = ("rms_norm_eps", "layer_norm_epsilon")
POSITIVE_NUMBERS = ("rope_theta",)
ROPE_NUMBERS = ("rope_theta", "factor", "attention_factor", "low_freq_factor", "high_freq_factor", "beta_fast",
                "beta_slow", "mscale", "mscale_all_dim")


def _config_class(model_type: str) -> type:
    # transformers (seconds to import) only when a config.json is read: `workbench kv` on an
    # architecture profile never needs it
    from transformers import CONFIG_MAPPING  # noqa: PLC0415 - heavy, only for config.json sources

    return CONFIG_MAPPING[model_type]


@functools.cache
def transformers_defaults(model_type: str) -> dict[str, Any]:
    """What a key missing from config.json means, per transformers' config class for
    ``model_type``: the class's keyword defaults, and its default RoPE base as ``rope_theta``.
    Keys whose default is None, and the keys of ``_DERIVED``, are left out."""
    config_class = _config_class(model_type)
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(config_class.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty and parameter.default is not None
        and name not in _DERIVED and not name.startswith("_")
    }
    theta = getattr(config_class, "default_theta", None)
    if isinstance(theta, int | float) and model_type not in ("gpt2", "bloom"):
        defaults["rope_theta"] = float(theta)
    return defaults


@functools.cache
def _aliases(model_type: str) -> dict[str, frozenset[str]]:
    """Other names transformers accepts for a key (its ``attribute_map``; BLOOM's ``n_embed``)."""
    pairs = list(getattr(_config_class(model_type), "attribute_map", {}).items())
    if model_type == "bloom":  # BloomConfig.__init__ pops n_embed as hidden_size
        pairs.append(("n_embed", "hidden_size"))
    groups: dict[str, set[str]] = {}
    for alias, canonical in pairs:
        groups.setdefault(canonical, set()).add(alias)
        groups.setdefault(alias, set()).add(canonical)
    return {key: frozenset(names) for key, names in groups.items()}


def with_defaults(hf: dict[str, Any]) -> dict[str, Any]:
    """``hf`` with every key it lacks (under any of its names) taken from transformers' config
    class for its model_type. A key present with ``null`` stays null, as in transformers."""
    aliases = _aliases(hf["model_type"])
    filled = dict(hf)
    for key, value in transformers_defaults(hf["model_type"]).items():
        if key not in hf and not any(alias in hf for alias in aliases.get(key, ())):
            filled[key] = value
    return filled


def check_types(hf: dict[str, Any], path: Path) -> None:
    """Each key the families read has the JSON type and range transformers expects."""
    for key in POSITIVE_INTS:
        value = hf.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise CheckpointError(f"{path}: config.json field {key!r} must be a positive integer, got {value!r}")
    for key in ("num_hidden_layers", "n_layer", "max_window_layers"):
        value = hf.get(key)
        if isinstance(value, int) and value > MAX_LAYERS:  # before any per-layer table is built
            raise CheckpointError(f"{path}: config.json field {key!r} is {value:,}, beyond any decoder "
                                  f"(at most {MAX_LAYERS:,} layers)")
    for key in BOOLEANS:
        value = hf.get(key)
        if value is not None and not isinstance(value, bool):
            raise CheckpointError(f"{path}: config.json field {key!r} must be true or false, got {value!r}")
    for key in (*NON_NEGATIVE_NUMBERS, *POSITIVE_NUMBERS):
        _check_number(hf.get(key), f"config.json field {key!r}", path, zero_ok=key in NON_NEGATIVE_NUMBERS)
    for table in ("rope_parameters", "rope_scaling"):
        params = hf.get(table)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise CheckpointError(f"{path}: config.json field {table!r} is malformed: expected an object, "
                                  f"got {params!r}")
        for key in ROPE_NUMBERS:
            _check_number(params.get(key), f"config.json field {table}.{key}", path, zero_ok=key.startswith("mscale"))


def _check_number(value: Any, what: str, path: Path, zero_ok: bool) -> None:
    if value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        raise CheckpointError(f"{path}: {what} must be a finite number {'>= 0' if zero_ok else '> 0'}, got {value!r}")
