"""MPT: ALiBi with MPT's slope rule, no biases, a fused Wqkv, optional clip_qkv.

* ALiBi slopes ``2^(-alibi_bias_max * i / P)`` for the next power of two P >= heads, odd ones
  first when heads is not a power of 2 (``DecoderConfig.alibi_bias_max``; at the default 8 these
  are BLOOM's slopes; transformers' MptModel always uses 8, MosaicML's code and we follow the
  config); no position table.
* ``Wqkv`` stacks q, k, v (d_model rows each); with ``clip_qkv`` its output is clamped to
  ``[-clip_qkv, clip_qkv]`` before the split (the same as clamping q, k and v).
* LayerNorms without a bias, a GELU (exact) MLP of 4 x d_model, tied embeddings; no biases.

Refused, because transformers' MPT does not run them either: ``qk_ln``, learned positions
(``alibi`` false), an ``expansion_ratio`` other than 4, and a ``logit_scale``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from workbench.config import DecoderConfig
from workbench.loading.families.common import Family, _fail, _get, split_fused

RENAMES = [
    (r"transformer\.wte\.weight", "embed.weight"),
    (r"transformer\.norm_f\.weight", "ln_final.weight"),
    (r"lm_head\.weight", "unembed.weight"),
    (r"transformer\.blocks\.(\d+)\.norm_1\.weight", r"blocks.\1.ln1.weight"),
    (r"transformer\.blocks\.(\d+)\.norm_2\.weight", r"blocks.\1.ln2.weight"),
    (r"transformer\.blocks\.(\d+)\.attn\.Wqkv\.weight", r"blocks.\1.attn.qkv.weight"),
    (r"transformer\.blocks\.(\d+)\.attn\.out_proj\.weight", r"blocks.\1.attn.o.weight"),
    (r"transformer\.blocks\.(\d+)\.ffn\.up_proj\.weight", r"blocks.\1.mlp.w_in.weight"),
    (r"transformer\.blocks\.(\d+)\.ffn\.down_proj\.weight", r"blocks.\1.mlp.w_out.weight"),
]


def read_config(hf: dict[str, Any], path: Path) -> dict[str, Any]:
    """DecoderConfig fields for an MPT ``config.json``."""
    attn = hf.get("attn_config") or {}
    if not isinstance(attn, dict):
        raise _fail(path, "MPT attn_config must be an object")
    if attn.get("qk_ln"):
        raise _fail(path, "MPT with qk_ln is not supported (transformers' MPT does not run it either)")
    if attn.get("alibi") is False:
        raise _fail(path, "MPT without ALiBi (learned positions) is not supported")
    if int(hf.get("expansion_ratio", 4)) != 4:
        raise _fail(path, f"MPT expansion_ratio {hf['expansion_ratio']} is not supported (4, as transformers)")
    if hf.get("logit_scale") is not None:
        raise _fail(path, "MPT with logit_scale is not supported")
    d_model = int(_get(hf, path, "d_model", "hidden_size"))
    n_heads = int(_get(hf, path, "n_heads", "num_attention_heads"))
    if d_model % n_heads:
        raise _fail(path, f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
    d_head = d_model // n_heads
    softmax_scale = attn.get("softmax_scale")
    clip = attn.get("clip_qkv")
    return dict(
        vocab_size=int(_get(hf, path, "vocab_size")),
        d_model=d_model,
        n_layers=int(_get(hf, path, "n_layers", "num_hidden_layers")),
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=4 * d_model,
        max_positions=int(_get(hf, path, "max_seq_len", default=2048)),  # the trained length
        positions="alibi",
        alibi_bias_max=float(attn.get("alibi_bias_max", 8)),
        norm="layernorm",
        norm_bias=False,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation="gelu",
        gated_mlp=False,
        attn_scale=float(softmax_scale) if softmax_scale else None,
        clip_qkv=float(clip) if clip else None,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def transform(state: dict[str, torch.Tensor], config: DecoderConfig, hf: dict[str, Any]) -> None:
    """Split the fused ``Wqkv`` rows into q, k and v."""
    split_fused(state, [n for n in state if n.endswith(".attn.qkv.weight")], config.d_model)


FAMILY = Family(("mpt",), read_config, RENAMES, prefix="transformer.", transform=transform)
