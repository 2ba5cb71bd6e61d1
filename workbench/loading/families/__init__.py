"""Model families: transformers ``config.json`` -> DecoderConfig, and tensor names -> ours.

Keyed on ``model_type`` only (never on a path or model name). Each family is one module holding
its config reader, its rename table of (regex, replacement) and, where tensors need reshaping
(GPT-2's Conv1D, BLOOM's fused and head-interleaved qkv, fused expert tensors), its transform,
gathered in a :class:`~workbench.loading.families.common.Family`. To add a family, write its
module and add its ``FAMILY`` to :data:`FAMILIES`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from workbench.config import ConfigError, DecoderConfig
from workbench.errors import CheckpointError
from workbench.loading.families import bloom, deepseek_v3, gemma2, gpt2, llama, mpt, phi3, qwen3
from workbench.loading.families.common import Family, _fail, window_per_layer
from workbench.loading.families.defaults import check_types, transformers_defaults, with_defaults

FAMILIES: dict[str, Family] = {
    model_type: family.FAMILY
    for family in (llama, gpt2, bloom, qwen3, gemma2, phi3, mpt, deepseek_v3)
    for model_type in family.FAMILY.model_types
}
SUPPORTED = tuple(sorted(FAMILIES))

__all__ = ["FAMILIES", "SUPPORTED", "Family", "config_from_hf", "convert_state_dict", "transformers_defaults",
           "window_per_layer"]

# Buffers some checkpoints carry that are recomputed, not loaded.
_IGNORED = re.compile(r".*\.(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias)$")


def config_from_hf(hf: dict[str, Any], path: Path) -> DecoderConfig:
    """DecoderConfig for a transformers ``config.json`` (already parsed)."""
    model_type = hf.get("model_type")
    if model_type is None:
        raise _fail(path, "config.json lacks 'model_type'")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise _fail(
            path,
            f"model_type {model_type!r} is not supported by the hooked decoder (supported: "
            f"{', '.join(SUPPORTED)}); the nnsight backend (--backend nnsight) can still record it",
        )
    check_types(hf, path)
    hf = with_defaults(hf)  # a missing key means what transformers' config class says
    try:
        fields = FAMILIES[model_type].read_config(hf, path)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as error:  # "hidden_size": "big"
        raise _fail(path, f"config.json has a malformed field ({type(error).__name__}: {error})") from None
    dtype = str(hf.get("dtype") or hf.get("torch_dtype") or "float32")
    try:
        return DecoderConfig(
            model_type=model_type,
            dtype=dtype,
            bos_token_id=hf.get("bos_token_id") if isinstance(hf.get("bos_token_id"), int) else None,
            eos_token_id=hf.get("eos_token_id") if isinstance(hf.get("eos_token_id"), int) else None,
            name=str(hf.get("_name_or_path") or path.parent.name),
            **fields,
        )
    except (ConfigError, TypeError, ValueError) as error:
        raise _fail(path, f"config.json does not describe a decoder: {error}") from None


def convert_state_dict(
    hf: dict[str, Any], config: DecoderConfig, tensors: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """Rename (and reshape where needed) a transformers state dict into the decoder's names."""
    model_type = hf["model_type"]
    family = FAMILIES[model_type]
    prefix = family.prefix
    if not any(name.startswith(prefix) for name in tensors):
        tensors = {(name if name == "lm_head.weight" else prefix + name): t for name, t in tensors.items()}
    rules = [(re.compile(pattern + "$"), replacement) for pattern, replacement in family.renames]
    state: dict[str, torch.Tensor] = {}
    leftovers: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if _IGNORED.match(name):
            continue
        for rule, replacement in rules:
            if rule.match(name):
                state[rule.sub(replacement, name)] = tensor
                break
        else:
            leftovers[name] = tensor
    if family.fused is not None:
        family.fused(leftovers, config)
        state.update({k: v for k, v in leftovers.items() if k.startswith("blocks.")})
        leftovers = {k: v for k, v in leftovers.items() if not k.startswith("blocks.")}
    if leftovers:
        raise _fail(path, f"unexpected tensor {sorted(leftovers)[0]} for model_type {model_type!r}")
    if family.transform is not None:
        try:
            family.transform(state, config, hf)
        except (RuntimeError, ValueError) as error:
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise _fail(path, f"fused attention weights do not match config.json ({detail})") from None
    if config.tie_embeddings:
        state.pop("unembed.weight", None)
    return state
