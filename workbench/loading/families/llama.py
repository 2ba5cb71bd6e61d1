"""The Llama family: llama, mistral, mixtral, qwen2, qwen2_moe (RoPE, RMSNorm, gated MLP, optional
sliding windows and routed experts). Config reader, tensor renames, and the split of transformers
5's fused expert tensors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from workbench.config import DecoderConfig
from workbench.loading.families.common import Family, _activation, _get, _rope, _sliding


def _attention_biases(hf: dict[str, Any]) -> dict[str, bool]:
    """Which attention projections carry a bias, as each family's transformers code decides."""
    model_type = hf["model_type"]
    if model_type == "llama":  # one switch for q, k, v and o
        bias = bool(hf.get("attention_bias", False))
        return {"qkv_bias": bias, "attn_out_bias": bias}
    if model_type == "qwen2":  # always q, k, v; never o
        return {"qkv_bias": True, "attn_out_bias": False}
    if model_type == "qwen2_moe":
        return {"qkv_bias": bool(hf.get("qkv_bias", True)), "attn_out_bias": False}
    return {"qkv_bias": False, "attn_out_bias": False}  # mistral, mixtral


def _llama_like(hf: dict[str, Any], path: Path) -> dict[str, Any]:
    model_type = hf["model_type"]
    n_layers = int(_get(hf, path, "num_hidden_layers"))
    d_model = int(_get(hf, path, "hidden_size"))
    n_heads = int(_get(hf, path, "num_attention_heads"))
    theta, scaling = _rope(hf, path)
    window, window_layers = _sliding(hf, n_layers)
    fields: dict[str, Any] = dict(
        vocab_size=int(_get(hf, path, "vocab_size")),
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(_get(hf, path, "num_key_value_heads", default=n_heads)),
        d_head=int(_get(hf, path, "head_dim", default=d_model // n_heads)),
        d_mlp=int(_get(hf, path, "intermediate_size")),
        max_positions=int(_get(hf, path, "max_position_embeddings")),
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        norm="rmsnorm",
        norm_eps=float(_get(hf, path, "rms_norm_eps", default=1e-6)),
        activation=_activation(_get(hf, path, "hidden_act", default="silu"), path),
        **_attention_biases(hf),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        sliding_window=window,
        sliding_layers=window_layers,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    if model_type == "mixtral":
        fields.update(n_experts=int(_get(hf, path, "num_local_experts")),
                      top_k=int(_get(hf, path, "num_experts_per_tok")), norm_topk_prob=True)
    if model_type == "qwen2_moe":
        fields.update(
            n_experts=int(_get(hf, path, "num_experts")),
            top_k=int(_get(hf, path, "num_experts_per_tok")),
            d_expert=int(_get(hf, path, "moe_intermediate_size")),
            norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            d_shared_expert=int(hf.get("shared_expert_intermediate_size") or 0),
        )
        sparse_step = int(hf.get("decoder_sparse_step", 1) or 1)
        dense = set(hf.get("mlp_only_layers") or [])
        moe = tuple(i for i in range(n_layers) if i not in dense and (i + 1) % sparse_step == 0)
        fields["moe_layers"] = None if len(moe) == n_layers else moe
    return fields


_LLAMA_RENAMES = [
    (r"model\.embed_tokens\.weight", "embed.weight"),
    (r"model\.norm\.(weight|bias)", r"ln_final.\1"),
    (r"lm_head\.weight", "unembed.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"blocks.\1.ln1.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blocks.\1.ln2.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.(weight|bias)", r"blocks.\1.mlp.w_gate.\2"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.(weight|bias)", r"blocks.\1.mlp.w_in.\2"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"blocks.\1.mlp.w_out.\2"),
    # Mixtral (on-disk names) and Qwen2-MoE routers and experts
    (r"model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight", r"blocks.\1.mlp.router.weight"),
    (r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w1\.weight", r"blocks.\1.mlp.experts.\2.w_gate.weight"),
    (r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w3\.weight", r"blocks.\1.mlp.experts.\2.w_in.weight"),
    (r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w2\.weight", r"blocks.\1.mlp.experts.\2.w_out.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate\.weight", r"blocks.\1.mlp.router.weight"),
    (r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.gate_proj\.weight", r"blocks.\1.mlp.experts.\2.w_gate.weight"),
    (r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.up_proj\.weight", r"blocks.\1.mlp.experts.\2.w_in.weight"),
    (r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.down_proj\.weight", r"blocks.\1.mlp.experts.\2.w_out.weight"),
    (r"model\.layers\.(\d+)\.mlp\.shared_expert\.gate_proj\.weight", r"blocks.\1.mlp.shared_expert.w_gate.weight"),
    (r"model\.layers\.(\d+)\.mlp\.shared_expert\.up_proj\.weight", r"blocks.\1.mlp.shared_expert.w_in.weight"),
    (r"model\.layers\.(\d+)\.mlp\.shared_expert\.down_proj\.weight", r"blocks.\1.mlp.shared_expert.w_out.weight"),
    (r"model\.layers\.(\d+)\.mlp\.shared_expert_gate\.weight", r"blocks.\1.mlp.shared_gate.weight"),
]


def _split_fused_experts(state: dict[str, torch.Tensor], config: DecoderConfig) -> None:
    """transformers 5 in-memory layout: experts.gate_up_proj (E, 2F, d), experts.down_proj (E, d, F)."""
    pattern = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(gate_up_proj|down_proj)$")
    for name in [n for n in state if pattern.match(n)]:
        layer, kind = pattern.match(name).groups()
        fused = state.pop(name)
        for expert in range(fused.shape[0]):
            prefix = f"blocks.{layer}.mlp.experts.{expert}"
            if kind == "gate_up_proj":
                gate, up = fused[expert].chunk(2, dim=0)
                state[f"{prefix}.w_gate.weight"], state[f"{prefix}.w_in.weight"] = gate, up
            else:
                state[f"{prefix}.w_out.weight"] = fused[expert]


FAMILY = Family(("llama", "mistral", "mixtral", "qwen2", "qwen2_moe"), _llama_like, _LLAMA_RENAMES, fused=_split_fused_experts)
