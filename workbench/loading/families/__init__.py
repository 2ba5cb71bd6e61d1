"""Model families: transformers ``config.json`` -> DecoderConfig, and tensor names -> ours.

Keyed on ``model_type`` only (never on a path or model name). Each family is a config reader and
a small rename table of (regex, replacement); the few tensors that need reshaping (GPT-2's
Conv1D, BLOOM's fused and head-interleaved qkv, fused expert tensors) get a transform.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from workbench.config import ConfigError, DecoderConfig, RopeScaling
from workbench.errors import CheckpointError

SUPPORTED = ("bloom", "gpt2", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe")


def _fail(path: Path, message: str) -> Exception:
    return CheckpointError(f"{path}: {message}")


def _get(hf: dict[str, Any], path: Path, *keys: str, default: Any = ...) -> Any:
    for key in keys:
        if hf.get(key) is not None:
            return hf[key]
    if default is ...:
        raise _fail(path, f"config.json lacks {keys[0]!r}")
    return default


def _rope(hf: dict[str, Any], path: Path) -> tuple[float, RopeScaling | None]:
    """rope_theta and scaling from transformers 5 ``rope_parameters`` or the older keys."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    params = {**legacy, **params}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    if kind not in ("linear", "dynamic", "yarn", "llama3"):
        raise _fail(path, f"RoPE scaling type {kind!r} is not supported (linear, dynamic, yarn, llama3)")
    if float(params.get("partial_rotary_factor") or 1.0) != 1.0:
        raise _fail(path, "partial rotary embeddings (partial_rotary_factor < 1) are not supported")
    if kind == "yarn" and params.get("truncate") is False:
        raise _fail(path, "YaRN with truncate=false is not supported")
    factor = params.get("factor")
    original = params.get("original_max_position_embeddings")
    if factor is None and kind == "yarn" and original:  # transformers: the context ratio
        factor = _get(hf, path, "max_position_embeddings") / original
    if factor is None:
        raise _fail(path, f"RoPE scaling {kind!r} lacks 'factor'")
    attention_factor = params.get("attention_factor")
    if kind == "yarn" and attention_factor is None and params.get("mscale") and params.get("mscale_all_dim"):
        # DeepSeek-style YaRN: the ratio of two mscale curves replaces the paper's default
        def mscale(weight: float) -> float:
            return 1.0 if factor <= 1 else 0.1 * weight * math.log(factor) + 1.0

        attention_factor = mscale(params["mscale"]) / mscale(params["mscale_all_dim"])
    return theta, RopeScaling(
        kind=kind,
        factor=float(factor),
        original_max_positions=original,
        low_freq_factor=params.get("low_freq_factor"),
        high_freq_factor=params.get("high_freq_factor"),
        beta_fast=params.get("beta_fast"),
        beta_slow=params.get("beta_slow"),
        attention_factor=attention_factor,
    )


def _activation(name: str, path: Path) -> str:
    table = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
             "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}
    if name not in table:
        raise _fail(path, f"activation {name!r} is not supported ({', '.join(sorted(table))})")
    return table[name]


def _sliding(hf: dict[str, Any], n_layers: int) -> tuple[int | None, tuple[int, ...] | None]:
    """(window, layers it applies to; None = all), following each family's transformers code.

    A model_type without its own rule (what the nnsight backend may meet) takes the generic one of
    transformers 5: ``sliding_window`` unless ``use_sliding_window`` is false, on the layers
    ``layer_types`` marks ``sliding_attention`` (every layer when it is absent)."""
    model_type, window = hf.get("model_type"), hf.get("sliding_window")
    if not window or model_type == "llama":
        return None, None
    if model_type in ("mistral", "mixtral"):  # every layer; layer_types is not read
        return int(window), None
    layer_types = hf.get("layer_types")
    if model_type not in ("qwen2", "qwen2_moe"):
        if hf.get("use_sliding_window", True) is False:
            return None, None
        if layer_types:
            layers = tuple(i for i, kind in enumerate(layer_types[:n_layers]) if kind == "sliding_attention")
            return (int(window), layers) if layers else (None, None)
        return int(window), None
    if not hf.get("use_sliding_window"):  # qwen2, qwen2_moe: off unless switched on
        return None, None
    if layer_types:
        layers = tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")
    else:  # configs written before layer_types existed
        max_window_layers = int(hf.get("max_window_layers", 28))
        if model_type == "qwen2":
            layers = tuple(range(max_window_layers, n_layers))
        else:
            layers = tuple(i for i in range(min(max_window_layers, n_layers)) if (i + 1) % 2)
    return (int(window), layers) if layers else (None, None)


def window_per_layer(hf: dict[str, Any], n_layers: int) -> list[int | None]:
    """The sliding window of each layer (None: full causal attention) of a config.json dict."""
    window, layers = _sliding(hf, n_layers)
    return [window if window is not None and (layers is None or i in layers) else None for i in range(n_layers)]


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


CONFIG_READERS: dict[str, Callable[[dict[str, Any], Path], dict[str, Any]]] = {
    "llama": _llama_like, "mistral": _llama_like, "qwen2": _llama_like,
    "mixtral": _llama_like, "qwen2_moe": _llama_like, "gpt2": _gpt2, "bloom": _bloom,
}


_POSITIVE_INTS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "intermediate_size", "max_position_embeddings", "n_embd", "n_head", "n_layer", "n_inner",
    "n_positions", "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
)  # not sliding_window: qwen2_moe writes 0 when the window is off


def config_from_hf(hf: dict[str, Any], path: Path) -> DecoderConfig:
    """DecoderConfig for a transformers ``config.json`` (already parsed)."""
    model_type = hf.get("model_type")
    if model_type is None:
        raise _fail(path, "config.json lacks 'model_type'")
    if not isinstance(model_type, str) or model_type not in CONFIG_READERS:
        raise _fail(
            path,
            f"model_type {model_type!r} is not supported by the hooked decoder (supported: "
            f"{', '.join(SUPPORTED)}); the nnsight backend (--backend nnsight) can still record it",
        )
    for key in _POSITIVE_INTS:
        value = hf.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise _fail(path, f"config.json field {key!r} must be a positive integer, got {value!r}")
    try:
        fields = CONFIG_READERS[model_type](hf, path)
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


# --- tensor names ---------------------------------------------------------------------------

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

# Buffers some checkpoints carry that are recomputed, not loaded.
_IGNORED = re.compile(r".*\.(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias)$")

RENAMES = {"llama": _LLAMA_RENAMES, "mistral": _LLAMA_RENAMES, "qwen2": _LLAMA_RENAMES,
           "mixtral": _LLAMA_RENAMES, "qwen2_moe": _LLAMA_RENAMES, "gpt2": _GPT2_RENAMES,
           "bloom": _BLOOM_RENAMES}
PREFIXES = {"gpt2": "transformer.", "bloom": "transformer."}


def _split_gpt2(state: dict[str, torch.Tensor], config: DecoderConfig) -> None:
    """GPT-2's Conv1D stores weights as (in, out): transpose, and split the fused c_attn."""
    for name in [n for n in state if n.endswith(".weight") and (".attn." in n or ".mlp." in n)]:
        state[name] = state[name].t().contiguous()
    for name in [n for n in state if ".attn.qkv." in n]:
        fused = state.pop(name)
        for part, tensor in zip("qkv", fused.split(config.d_model, dim=0), strict=True):
            state[name.replace(".qkv.", f".{part}.")] = tensor.contiguous()


def _split_bloom(state: dict[str, torch.Tensor], config: DecoderConfig) -> None:
    """BLOOM fuses q, k, v per head: rows are laid out as (head, [q|k|v], d_head)."""
    for name in [n for n in state if ".attn.qkv." in n]:
        fused = state.pop(name)
        grouped = fused.view(config.n_heads, 3, config.d_head, *fused.shape[1:])
        for index, part in enumerate("qkv"):
            tensor = grouped[:, index].reshape(config.n_heads * config.d_head, *fused.shape[1:])
            state[name.replace(".qkv.", f".{part}.")] = tensor.contiguous()


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


def convert_state_dict(
    hf: dict[str, Any], config: DecoderConfig, tensors: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """Rename (and reshape where needed) a transformers state dict into the decoder's names."""
    model_type = hf["model_type"]
    prefix = PREFIXES.get(model_type)
    if prefix and not any(name.startswith(prefix) for name in tensors):
        tensors = {(name if name == "lm_head.weight" else prefix + name): t for name, t in tensors.items()}
    if model_type not in PREFIXES and not any(name.startswith("model.") for name in tensors):
        tensors = {(name if name == "lm_head.weight" else "model." + name): t for name, t in tensors.items()}
    rules = [(re.compile(pattern + "$"), replacement) for pattern, replacement in RENAMES[model_type]]
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
    if model_type in ("mixtral", "qwen2_moe"):
        _split_fused_experts(leftovers, config)
        state.update({k: v for k, v in leftovers.items() if k.startswith("blocks.")})
        leftovers = {k: v for k, v in leftovers.items() if not k.startswith("blocks.")}
    if leftovers:
        raise _fail(path, f"unexpected tensor {sorted(leftovers)[0]} for model_type {model_type!r}")
    try:
        if model_type == "gpt2":
            _split_gpt2(state, config)
        elif model_type == "bloom":
            _split_bloom(state, config)
    except (RuntimeError, ValueError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise _fail(path, f"fused attention weights do not match config.json ({detail})") from None
    if config.tie_embeddings:
        state.pop("unembed.weight", None)
    return state

