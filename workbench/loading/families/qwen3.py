"""Qwen3 and Qwen3-MoE: Llama's layout plus QK-norm (an RMSNorm over d_head on every q and k head).

Qwen3-MoE routes like Qwen2-MoE (softmax, top-k, optional renormalisation, dense layers listed in
``mlp_only_layers`` or off the ``decoder_sparse_step`` grid) but has no shared expert. Attention
biases follow ``attention_bias`` (q, k, v and o alike). A sliding window, when
``use_sliding_window`` is set, covers the layers ``layer_types`` marks (Qwen3, defaulting to
layers from ``max_window_layers`` on) or every layer (Qwen3-MoE), as transformers applies it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.loading.families.common import Family, _get
from workbench.loading.families.llama import _LLAMA_RENAMES, _llama_like, _split_fused_experts

RENAMES = [
    *_LLAMA_RENAMES,
    (r"model\.layers\.(\d+)\.self_attn\.([qk])_norm\.weight", r"blocks.\1.attn.\2_norm.weight"),
]


def _moe(hf: dict[str, Any], path: Path, n_layers: int) -> dict[str, Any]:
    sparse_step = int(hf.get("decoder_sparse_step", 1) or 1)
    dense = set(hf.get("mlp_only_layers") or [])
    moe = tuple(i for i in range(n_layers) if i not in dense and (i + 1) % sparse_step == 0)
    return dict(
        n_experts=int(_get(hf, path, "num_experts", "num_local_experts")),
        top_k=int(_get(hf, path, "num_experts_per_tok")),
        d_expert=int(_get(hf, path, "moe_intermediate_size")),
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
        moe_layers=None if len(moe) == n_layers else moe,
    )


def read_config(hf: dict[str, Any], path: Path) -> dict[str, Any]:
    """DecoderConfig fields for a Qwen3 or Qwen3-MoE ``config.json``."""
    fields = _llama_like(hf, path)
    bias = bool(hf.get("attention_bias", False))
    fields.update(qkv_bias=bias, attn_out_bias=bias, mlp_bias=False, qk_norm=True)
    if hf["model_type"] == "qwen3_moe":
        fields.update(_moe(hf, path, fields["n_layers"]))
    return fields


# q_norm and k_norm are per-head vectors of d_head already: nothing to reshape.
FAMILY = Family(("qwen3", "qwen3_moe"), read_config, RENAMES, fused=_split_fused_experts)
