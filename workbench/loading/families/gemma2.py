"""Gemma 2 (and Gemma 3's text decoder): soft-caps, sliding/global layers, sandwich norms.

What differs from Llama, each switched on in the DecoderConfig:

* attention scores ``cap * tanh(s / cap)`` (``attn_logit_softcapping``) after the scale, before
  the mask; output logits the same with ``final_logit_softcapping``;
* the scale is ``query_pre_attn_scalar ** -0.5``, not ``head_dim ** -0.5``;
* ``layer_types`` alternates sliding-window and global layers (default: even layers slide);
* RMSNorms multiply by ``1 + weight``; each sublayer has a norm before it and another on its
  output before the residual add (``post_attention_layernorm``, ``post_feedforward_layernorm``);
* a GELU-tanh gated MLP; token embeddings times sqrt(hidden_size); tied embeddings by default.

Gemma 3's text decoder (``gemma3_text``) is the same machinery plus QK-norm (``1 + weight``
RMSNorms on q and k heads), no soft-caps unless set, five sliding layers to one global by
default, and a RoPE of its own on the sliding layers (``rope_parameters["sliding_attention"]``,
unscaled, base 10k; ``local_rope_theta``) while global layers use the ``full_attention`` one
(base 1M, possibly scaled). Its bidirectional-attention variant is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.config import RopeScaling
from workbench.loading.families.common import Family, _activation, _fail, _get, _rope, _sliding

RENAMES = [
    (r"model\.embed_tokens\.weight", "embed.weight"),
    (r"model\.norm\.weight", "ln_final.weight"),
    (r"lm_head\.weight", "unembed.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"blocks.\1.ln1.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blocks.\1.ln1_post.weight"),
    (r"model\.layers\.(\d+)\.pre_feedforward_layernorm\.weight", r"blocks.\1.ln2.weight"),
    (r"model\.layers\.(\d+)\.post_feedforward_layernorm\.weight", r"blocks.\1.ln2_post.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"model\.layers\.(\d+)\.self_attn\.([qk])_norm\.weight", r"blocks.\1.attn.\2_norm.weight"),  # Gemma 3
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"blocks.\1.mlp.w_gate.weight"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"blocks.\1.mlp.w_in.weight"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"blocks.\1.mlp.w_out.weight"),
]


def _cap(value: Any) -> float | None:
    return None if value in (None, 0) else float(value)


def _gemma3_rope(hf: dict[str, Any], path: Path) -> tuple[float, RopeScaling | None, float]:
    """(global theta, global scaling, local theta) from per-layer-type or legacy RoPE keys."""
    nested = hf.get("rope_parameters") or {}
    if "full_attention" in nested or "sliding_attention" in nested:
        full, local = nested.get("full_attention") or {}, nested.get("sliding_attention") or {}
    else:  # transformers 4: rope_theta, rope_scaling (global) and rope_local_base_freq
        full = {**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", 1_000_000.0)}
        local = {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
    if local.get("rope_type", local.get("type", "default")) != "default":
        raise _fail(path, "Gemma 3 with a scaled RoPE on its sliding layers is not supported")
    theta, scaling = _rope({"rope_parameters": {"rope_theta": 1_000_000.0, **full},
                            "max_position_embeddings": hf.get("max_position_embeddings")}, path)
    return theta, scaling, float(local.get("rope_theta", 10_000.0))


def read_config(hf: dict[str, Any], path: Path) -> dict[str, Any]:
    """DecoderConfig fields for a Gemma 2 or Gemma 3 text ``config.json``."""
    n_layers = int(_get(hf, path, "num_hidden_layers"))
    d_model = int(_get(hf, path, "hidden_size"))
    n_heads = int(_get(hf, path, "num_attention_heads"))
    d_head = int(_get(hf, path, "head_dim", default=d_model // n_heads))
    gemma3 = hf["model_type"] == "gemma3_text"
    if gemma3 and hf.get("use_bidirectional_attention"):
        raise _fail(path, "Gemma 3 with use_bidirectional_attention is not supported (not a causal decoder)")
    if gemma3:
        theta, scaling, local_theta = _gemma3_rope(hf, path)
    else:
        (theta, scaling), local_theta = _rope(hf, path), None
    window, window_layers = _sliding(hf, n_layers)
    bias = bool(hf.get("attention_bias", False))
    return dict(
        vocab_size=int(_get(hf, path, "vocab_size")),
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(_get(hf, path, "num_key_value_heads", default=n_heads)),
        d_head=d_head,
        d_mlp=int(_get(hf, path, "intermediate_size")),
        max_positions=int(_get(hf, path, "max_position_embeddings")),
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        norm="rmsnorm",
        norm_eps=float(_get(hf, path, "rms_norm_eps", default=1e-6)),
        norm_offset=1.0,
        activation=_activation(_get(hf, path, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh"), path),
        gated_mlp=True,
        qkv_bias=bias,
        attn_out_bias=bias,
        attn_scale=float(_get(hf, path, "query_pre_attn_scalar", default=d_head)) ** -0.5,
        attn_softcap=_cap(hf.get("attn_logit_softcapping")),
        final_softcap=_cap(hf.get("final_logit_softcapping")),
        sliding_window=window,
        sliding_layers=window_layers,
        post_norms=True,
        embed_scale=True,
        qk_norm=gemma3,
        local_rope_theta=local_theta if window else None,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


# Nothing to reshape: Gemma stores the ``weight`` of its ``1 + weight`` norms as is.
FAMILY = Family(("gemma2", "gemma3_text"), read_config, RENAMES)
