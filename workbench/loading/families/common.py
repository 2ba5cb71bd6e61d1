"""What every family module shares: the :class:`Family` record and the config-reading helpers."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.config import DecoderConfig, RopeScaling
from workbench.errors import CheckpointError

Transform = Callable[[dict[str, torch.Tensor], DecoderConfig], None]
HfTransform = Callable[[dict[str, torch.Tensor], DecoderConfig, dict[str, Any]], None]


@dataclass(frozen=True)
class Family:
    """One family of transformers checkpoints, as the loader reads it.

    ``read_config``: config.json (parsed) -> DecoderConfig fields. ``renames``: (regex, replacement)
    from transformers tensor names to the decoder's. ``prefix``: what every tensor name starts with
    in a full checkpoint (added when a base model was saved without it). ``fused``: turns tensors
    no rename matched into decoder tensors (transformers 5's fused experts), in place.
    ``transform``: reshapes renamed tensors (fused qkv, Conv1D) in place; it is also given
    config.json (parsed), which DeepSeek reads for ``rope_interleave``.
    """

    model_types: tuple[str, ...]
    read_config: Callable[[dict[str, Any], Path], dict[str, Any]]
    renames: list[tuple[str, str]]
    prefix: str = "model."
    fused: Transform | None = None
    transform: HfTransform | None = None


def _fail(path: Path, message: str) -> Exception:
    return CheckpointError(f"{path}: {message}")


def _get(hf: dict[str, Any], path: Path, *keys: str, default: Any = ...) -> Any:
    for key in keys:
        if hf.get(key) is not None:
            return hf[key]
    if default is ...:
        raise _fail(path, f"config.json lacks {keys[0]!r}")
    return default


def _rope_params(hf: dict[str, Any]) -> dict[str, Any]:
    """The RoPE keys of config.json: the older ``rope_scaling`` overridden by transformers 5's ``rope_parameters``."""
    return {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}


def _yarn_mscale(factor: float, weight: float) -> float:
    """DeepSeek's YaRN mscale curve: ``0.1 * weight * ln(factor) + 1`` (1 when factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * weight * math.log(factor) + 1.0


def _rope(hf: dict[str, Any], path: Path) -> tuple[float, RopeScaling | None]:
    """rope_theta and scaling from transformers 5 ``rope_parameters`` or the older keys."""
    params = _rope_params(hf)
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
        attention_factor = _yarn_mscale(factor, params["mscale"]) / _yarn_mscale(factor, params["mscale_all_dim"])
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
    if model_type in ("gemma2", "gemma3_text"):  # layer_types, else every pattern-th layer global
        pattern = 2 if model_type == "gemma2" else int(hf.get("sliding_window_pattern") or 6)
        layer_types = hf.get("layer_types") or [
            "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)
        ]
        layers = tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")
        return _all_layers_none(window, layers, n_layers)
    if model_type in ("qwen3", "qwen3_moe"):  # off unless switched on
        if not hf.get("use_sliding_window"):
            return None, None
        if model_type == "qwen3_moe":  # its attention reads config.sliding_window on every layer
            return int(window), None
        layer_types = hf.get("layer_types")
        if layer_types:
            layers = tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")
        else:
            layers = tuple(range(int(hf.get("max_window_layers", 28)), n_layers))
        return _all_layers_none(window, layers, n_layers)
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


def _all_layers_none(window: Any, layers: tuple[int, ...], n_layers: int) -> tuple[int | None, tuple[int, ...] | None]:
    """(window, its layers); no window without layers, and layers None when it covers all of them."""
    if not layers:
        return None, None
    return int(window), None if len(layers) == n_layers else layers


def window_per_layer(hf: dict[str, Any], n_layers: int) -> list[int | None]:
    """The sliding window of each layer (None: full causal attention) of a config.json dict."""
    window, layers = _sliding(hf, n_layers)
    return [window if window is not None and (layers is None or i in layers) else None for i in range(n_layers)]


# --- tensor names ---------------------------------------------------------------------------


def split_fused(state: dict[str, torch.Tensor], names: list[str], sizes: int | list[int]) -> None:
    """Replace each fused ``.qkv.`` tensor of ``names`` by its q, k and v rows (``sizes``, as
    ``Tensor.split`` takes them), in place. Errors: Tensor.split's RuntimeError, or ValueError when
    the split gives other than three parts."""
    for name in names:
        fused = state.pop(name)
        for part, tensor in zip("qkv", fused.split(sizes, dim=0), strict=True):
            state[name.replace(".qkv.", f".{part}.")] = tensor.contiguous()
