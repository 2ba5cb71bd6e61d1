"""Phi-3: Llama's block with fused projections and LongRoPE.

* ``qkv_proj`` stacks q (heads x d_head rows), k and v (kv_heads x d_head each); ``gate_up_proj``
  stacks the gate then the up projection. The loader splits both into our separate weights.
* LongRoPE ("longrope", written "su" or "yarn" by older Phi-3 configs): every RoPE frequency is
  divided by its own factor, ``short_factor`` while the forward's largest position is within
  ``original_max_position_embeddings``, ``long_factor`` beyond; cos and sin are multiplied by
  ``attention_factor`` (default sqrt(1 + ln s / ln L) with s = max / original positions).
* ``partial_rotary_factor`` (Phi-4-mini: 0.75): RoPE turns the first head_dim x factor dims.
* A sliding window, when set, covers every layer. No biases anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from workbench.config import DecoderConfig, RopeScaling
from workbench.loading.families.common import (
    Family,
    _activation,
    _fail,
    _get,
    _rope,
    _rope_params,
    split_fused,
)
from workbench.loading.families.llama import _LLAMA_RENAMES

RENAMES = [
    *_LLAMA_RENAMES,
    (r"model\.layers\.(\d+)\.self_attn\.qkv_proj\.weight", r"blocks.\1.attn.qkv.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate_up_proj\.weight", r"blocks.\1.mlp.gate_up.weight"),
]


def _rotary_dims(hf: dict[str, Any], d_head: int) -> int:
    """Dims RoPE turns per head: ``head_dim x partial_rotary_factor`` (Phi-4-mini: 0.75)."""
    params = hf.get("rope_parameters") or {}
    factor = float(params.get("partial_rotary_factor") or hf.get("partial_rotary_factor") or 1.0)
    return int(d_head * factor)


def _longrope(hf: dict[str, Any], path: Path, rotary: int) -> tuple[float, RopeScaling | None] | None:
    """(theta, LongRoPE scaling) when the config declares it; None for the other kinds."""
    params = _rope_params(hf)
    if params.get("rope_type", params.get("type")) not in ("longrope", "su", "yarn"):
        return None
    original = hf.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
    if not original:
        raise _fail(path, "LongRoPE needs original_max_position_embeddings")
    factors = {}
    for key in ("short_factor", "long_factor"):
        values = params.get(key)
        if not isinstance(values, list) or len(values) != rotary // 2:
            raise _fail(path, f"LongRoPE {key} must list {rotary // 2} numbers (rotated dims / 2)")
        factors[key] = tuple(float(v) for v in values)
    factor = params.get("factor") or _get(hf, path, "max_position_embeddings") / original
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = RopeScaling(
        kind="longrope", factor=float(factor), original_max_positions=int(original),
        attention_factor=params.get("attention_factor"), **factors,
    )
    return theta, scaling


def read_config(hf: dict[str, Any], path: Path) -> dict[str, Any]:
    """DecoderConfig fields for a Phi-3 ``config.json``."""
    d_model = int(_get(hf, path, "hidden_size"))
    n_heads = int(_get(hf, path, "num_attention_heads"))
    d_head = int(_get(hf, path, "head_dim", default=d_model // n_heads))
    rotary = _rotary_dims(hf, d_head)
    if rotary % 2:
        raise _fail(path, f"partial_rotary_factor leaves an odd number of rotated dims ({rotary})")
    unpartial = {**hf, "partial_rotary_factor": None,
                 "rope_parameters": {**(hf.get("rope_parameters") or {}), "partial_rotary_factor": None}}
    theta, scaling = _longrope(hf, path, rotary) or _rope(unpartial, path)
    window = hf.get("sliding_window")
    return dict(
        vocab_size=int(_get(hf, path, "vocab_size")),
        d_model=d_model,
        n_layers=int(_get(hf, path, "num_hidden_layers")),
        n_heads=n_heads,
        n_kv_heads=int(_get(hf, path, "num_key_value_heads", default=n_heads)),
        d_head=d_head,
        d_mlp=int(_get(hf, path, "intermediate_size")),
        max_positions=int(_get(hf, path, "max_position_embeddings")),
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        norm="rmsnorm",
        norm_eps=float(_get(hf, path, "rms_norm_eps", default=1e-5)),
        activation=_activation(_get(hf, path, "hidden_act", default="silu"), path),
        gated_mlp=True,
        sliding_window=int(window) if window else None,
        rotary_dims=None if rotary == d_head else rotary,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def transform(state: dict[str, torch.Tensor], config: DecoderConfig, hf: dict[str, Any]) -> None:
    """Split the fused ``qkv`` rows into q, k, v and ``gate_up`` into gate and up."""
    sizes = [config.n_heads * config.d_head, config.kv_heads * config.d_head, config.kv_heads * config.d_head]
    split_fused(state, [n for n in state if n.endswith(".attn.qkv.weight")], sizes)
    for name in [n for n in state if n.endswith(".mlp.gate_up.weight")]:
        gate, up = state.pop(name).chunk(2, dim=0)
        state[name.replace(".gate_up.", ".w_gate.")] = gate.contiguous()
        state[name.replace(".gate_up.", ".w_in.")] = up.contiguous()


FAMILY = Family(("phi3",), read_config, RENAMES, transform=transform)
