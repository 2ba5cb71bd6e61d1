"""GPT-2: learned positions, LayerNorm, Conv1D weights stored (in, out) with a fused c_attn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from workbench.config import DecoderConfig
from workbench.loading.families.common import Family, _activation, _fail, _get, split_fused


def _gpt2(hf: dict[str, Any], path: Path) -> dict[str, Any]:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise _fail(path, "GPT-2 variants with non-standard attention scaling are not supported")
    d_model, n_heads = int(_get(hf, path, "n_embd")), int(_get(hf, path, "n_head"))
    return dict(
        vocab_size=int(_get(hf, path, "vocab_size")),
        d_model=d_model,
        n_layers=int(_get(hf, path, "n_layer")),
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=int(hf.get("n_inner") or 4 * d_model),
        max_positions=int(_get(hf, path, "n_positions")),
        positions="learned",
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=_activation(hf.get("activation_function", "gelu_new"), path),
        gated_mlp=False,
        qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


_GPT2_RENAMES = [
    (r"transformer\.wte\.weight", "embed.weight"),
    (r"transformer\.wpe\.weight", "pos_embed.weight"),
    (r"transformer\.ln_f\.(weight|bias)", r"ln_final.\1"),
    (r"lm_head\.weight", "unembed.weight"),
    (r"transformer\.h\.(\d+)\.ln_1\.(weight|bias)", r"blocks.\1.ln1.\2"),
    (r"transformer\.h\.(\d+)\.ln_2\.(weight|bias)", r"blocks.\1.ln2.\2"),
    (r"transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (r"transformer\.h\.(\d+)\.attn\.c_proj\.(weight|bias)", r"blocks.\1.attn.o.\2"),
    (r"transformer\.h\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"blocks.\1.mlp.w_in.\2"),
    (r"transformer\.h\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"blocks.\1.mlp.w_out.\2"),
]


def _split_gpt2(state: dict[str, torch.Tensor], config: DecoderConfig, hf: dict[str, Any]) -> None:
    """GPT-2's Conv1D stores weights as (in, out): transpose, and split the fused c_attn."""
    for name in [n for n in state if n.endswith(".weight") and (".attn." in n or ".mlp." in n)]:
        state[name] = state[name].t().contiguous()
    split_fused(state, [n for n in state if ".attn.qkv." in n], config.d_model)


FAMILY = Family(("gpt2",), _gpt2, _GPT2_RENAMES, prefix="transformer.", transform=_split_gpt2)
