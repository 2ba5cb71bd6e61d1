"""BLOOM: ALiBi, an embedding LayerNorm, and q/k/v fused per head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from workbench.config import DecoderConfig
from workbench.loading.families.common import Family, _fail, _get


def _bloom(hf: dict[str, Any], path: Path) -> dict[str, Any]:
    if hf.get("apply_residual_connection_post_layernorm"):
        raise _fail(path, "BLOOM with apply_residual_connection_post_layernorm is not supported")
    d_model = int(_get(hf, path, "hidden_size", "n_embed"))
    n_heads = int(_get(hf, path, "n_head", "num_attention_heads"))
    return dict(
        vocab_size=int(_get(hf, path, "vocab_size")),
        d_model=d_model,
        n_layers=int(_get(hf, path, "n_layer", "num_hidden_layers")),
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=4 * d_model,
        # ALiBi has no position table; this is the length BLOOM was trained at.
        max_positions=int(hf.get("seq_length") or hf.get("max_position_embeddings") or 2048),
        positions="alibi",
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation="gelu_tanh",
        gated_mlp=False,
        qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        embed_norm=True,
    )


_BLOOM_RENAMES = [
    (r"transformer\.word_embeddings\.weight", "embed.weight"),
    (r"transformer\.word_embeddings_layernorm\.(weight|bias)", r"embed_norm.\1"),
    (r"transformer\.ln_f\.(weight|bias)", r"ln_final.\1"),
    (r"lm_head\.weight", "unembed.weight"),
    (r"transformer\.h\.(\d+)\.input_layernorm\.(weight|bias)", r"blocks.\1.ln1.\2"),
    (r"transformer\.h\.(\d+)\.post_attention_layernorm\.(weight|bias)", r"blocks.\1.ln2.\2"),
    (r"transformer\.h\.(\d+)\.self_attention\.query_key_value\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (r"transformer\.h\.(\d+)\.self_attention\.dense\.(weight|bias)", r"blocks.\1.attn.o.\2"),
    (r"transformer\.h\.(\d+)\.mlp\.dense_h_to_4h\.(weight|bias)", r"blocks.\1.mlp.w_in.\2"),
    (r"transformer\.h\.(\d+)\.mlp\.dense_4h_to_h\.(weight|bias)", r"blocks.\1.mlp.w_out.\2"),
]


def _split_bloom(state: dict[str, torch.Tensor], config: DecoderConfig, hf: dict[str, Any]) -> None:
    """BLOOM fuses q, k, v per head: rows are laid out as (head, [q|k|v], d_head)."""
    for name in [n for n in state if ".attn.qkv." in n]:
        fused = state.pop(name)
        grouped = fused.view(config.n_heads, 3, config.d_head, *fused.shape[1:])
        for index, part in enumerate("qkv"):
            tensor = grouped[:, index].reshape(config.n_heads * config.d_head, *fused.shape[1:])
            state[name.replace(".qkv.", f".{part}.")] = tensor.contiguous()


FAMILY = Family(("bloom",), _bloom, _BLOOM_RENAMES, prefix="transformer.", transform=_split_bloom)
