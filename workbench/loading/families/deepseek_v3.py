"""DeepSeek V3: multi-head latent attention, dense first layers, then routed + shared experts.

* MLA (``workbench.mla``): ``q_lora_rank`` (or none), ``kv_lora_rank``, ``qk_nope_head_dim``
  (our ``d_head``), ``qk_rope_head_dim`` (``mla_rope_dim``), ``v_head_dim`` (``d_head_v``); the
  scale is ``(nope + rope) ** -0.5``, times YaRN's ``mscale(factor, mscale_all_dim)^2`` when the
  RoPE is scaled. With ``rope_interleave`` (the default) DeepSeek rotates adjacent pairs; the
  loader permutes the RoPE rows of the query and latent projections into rotate-half order.
* Layers ``< first_k_dense_replace`` have a dense MLP of ``intermediate_size``; the others route
  each token to ``num_experts_per_tok`` of ``n_routed_experts`` (``moe_intermediate_size`` each)
  and add ``n_shared_experts`` shared ones (one MLP of n x moe_intermediate_size, ungated).
* Routing: sigmoid scores; ``e_score_correction_bias`` is added for the choice only; experts
  come from the best ``topk_group`` of ``n_group`` groups (a group's merit: its two best biased
  scores); chosen scores renormalised (``norm_topk_prob``) and times ``routed_scaling_factor``.
* The multi-token-prediction layers some checkpoints carry (indices >= num_hidden_layers) are
  not part of the decoder and are dropped, as transformers drops them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from workbench.config import DecoderConfig
from workbench.loading.families.common import Family, _activation, _get, _rope, _rope_params, _yarn_mscale
from workbench.loading.families.llama import _LLAMA_RENAMES, _split_fused_experts

_LAYER = r"model\.layers\.(\d+)\."
RENAMES = [
    *_LLAMA_RENAMES,
    (_LAYER + r"self_attn\.q_a_proj\.(weight|bias)", r"blocks.\1.attn.q_a.\2"),
    (_LAYER + r"self_attn\.q_a_layernorm\.weight", r"blocks.\1.attn.q_a_norm.weight"),
    (_LAYER + r"self_attn\.q_b_proj\.weight", r"blocks.\1.attn.q_b.weight"),
    (_LAYER + r"self_attn\.kv_a_proj_with_mqa\.(weight|bias)", r"blocks.\1.attn.kv_a.\2"),
    (_LAYER + r"self_attn\.kv_a_layernorm\.weight", r"blocks.\1.attn.kv_a_norm.weight"),
    (_LAYER + r"self_attn\.kv_b_proj\.weight", r"blocks.\1.attn.kv_b.weight"),
    (_LAYER + r"mlp\.gate\.e_score_correction_bias", r"blocks.\1.mlp.selection_bias"),
    (_LAYER + r"mlp\.shared_experts\.gate_proj\.weight", r"blocks.\1.mlp.shared_expert.w_gate.weight"),
    (_LAYER + r"mlp\.shared_experts\.up_proj\.weight", r"blocks.\1.mlp.shared_expert.w_in.weight"),
    (_LAYER + r"mlp\.shared_experts\.down_proj\.weight", r"blocks.\1.mlp.shared_expert.w_out.weight"),
    # multi-token-prediction module: parked under "mtp." and dropped by transform()
    (_LAYER + r"(enorm|hnorm|eh_proj|shared_head\.norm|shared_head\.head|embed_tokens)\.weight", r"mtp.\1.\2"),
]


def read_config(hf: dict[str, Any], path: Path) -> dict[str, Any]:
    """DecoderConfig fields for a DeepSeek V3 ``config.json``."""
    n_layers = int(_get(hf, path, "num_hidden_layers"))
    nope, rope = int(_get(hf, path, "qk_nope_head_dim")), int(_get(hf, path, "qk_rope_head_dim"))
    theta, scaling = _rope(hf, path)
    scale = (nope + rope) ** -0.5
    params = _rope_params(hf)
    if scaling is not None and params.get("mscale_all_dim"):
        scale *= _yarn_mscale(scaling.factor, float(params["mscale_all_dim"])) ** 2
    first_dense = int(hf.get("first_k_dense_replace") or 0)
    n_shared = int(hf.get("n_shared_experts") or 0)
    d_expert = int(_get(hf, path, "moe_intermediate_size"))
    bias = bool(hf.get("attention_bias", False))
    q_rank = hf.get("q_lora_rank")
    return dict(
        vocab_size=int(_get(hf, path, "vocab_size")),
        d_model=int(_get(hf, path, "hidden_size")),
        n_layers=n_layers,
        n_heads=int(_get(hf, path, "num_attention_heads")),
        d_head=nope,
        d_head_v=int(_get(hf, path, "v_head_dim")),
        mla_kv_rank=int(_get(hf, path, "kv_lora_rank")),
        mla_rope_dim=rope,
        mla_q_rank=int(q_rank) if q_rank else None,
        d_mlp=int(_get(hf, path, "intermediate_size")),
        max_positions=int(_get(hf, path, "max_position_embeddings")),
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        attn_scale=scale,
        norm="rmsnorm",
        norm_eps=float(_get(hf, path, "rms_norm_eps", default=1e-6)),
        activation=_activation(_get(hf, path, "hidden_act", default="silu"), path),
        gated_mlp=True,
        qkv_bias=bias,
        attn_out_bias=bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        n_experts=int(_get(hf, path, "n_routed_experts", "num_local_experts")),
        top_k=int(_get(hf, path, "num_experts_per_tok")),
        moe_layers=None if first_dense == 0 else tuple(range(first_dense, n_layers)),
        d_expert=d_expert,
        d_shared_expert=d_expert * n_shared,
        shared_expert_gate=False,
        norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
        router_score="sigmoid",
        router_bias=True,
        n_expert_groups=int(hf.get("n_group") or 1),
        topk_groups=int(hf.get("topk_group") or 1),
        routed_scale=float(hf.get("routed_scaling_factor") or 1.0),
    )


def _pairs_to_halves(rows: torch.Tensor, start: int, width: int) -> None:
    """Reorder rows ``[start, start + width)`` from (0, 1), (2, 3)... pairs to evens then odds, in place."""
    order = torch.cat([torch.arange(0, width, 2), torch.arange(1, width, 2)]) + start
    rows[start : start + width] = rows[order].clone()


def transform(state: dict[str, torch.Tensor], config: DecoderConfig, hf: dict[str, Any]) -> None:
    """Drop the MTP layers; with ``rope_interleave``, permute the RoPE rows into rotate-half order."""
    for name in [n for n in state if n.startswith("mtp.")]:
        del state[name]
    for name in list(state):
        layer = re.match(r"blocks\.(\d+)\.", name)
        if layer and int(layer.group(1)) >= config.n_layers:
            del state[name]
    if not hf.get("rope_interleave", True):
        return
    nope, rope, rank = config.d_head, config.mla_rope_dim, config.mla_kv_rank
    for name in [n for n in state if re.fullmatch(r"blocks\.\d+\.attn\.(q|q_b)\.weight", n)]:
        heads = state[name].clone().view(config.n_heads, nope + rope, -1)
        for head in heads:
            _pairs_to_halves(head, nope, rope)
        state[name] = heads.view(config.n_heads * (nope + rope), -1)
    for name in [n for n in state if re.fullmatch(r"blocks\.\d+\.attn\.kv_a\.(weight|bias)", n)]:
        rows = state[name].clone()
        _pairs_to_halves(rows, rank, rope)
        state[name] = rows


FAMILY = Family(("deepseek_v3",), read_config, RENAMES, fused=_split_fused_experts, transform=transform)
