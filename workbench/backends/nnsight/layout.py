"""Finding a transformers model's parts generically: layers, attention, MLP, router, final norm, windows.

No model names: the layer list is the longest ``nn.ModuleList`` whose items all have an attention
child; see :func:`describe`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.errors import BackendError
from workbench.loading.families import window_per_layer
from workbench.model.positions import alibi_slopes

MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn", "moe")


ROUTER_NAMES = ("gate", "router")


@dataclass(frozen=True)
class LayerParts:
    """Where the parts of one decoder layer are, as attribute paths relative to the layer."""

    index: int
    attention: str
    mlp: str | None
    router: str | None  # e.g. "mlp.gate"; None for a dense layer
    window: int | None  # sliding window of this layer's attention (None: full causal)


@dataclass(frozen=True)
class HFLayout:
    """The generic description of a transformers decoder the backend records from."""

    layers_path: str  # e.g. "model.layers"
    layers: tuple[LayerParts, ...]
    final_norm_path: str  # e.g. "model.norm"
    n_heads: int
    d_head: int
    scale: float
    n_experts: int
    top_k: int
    norm_topk_prob: bool
    alibi: torch.Tensor | None = None  # (H,) ALiBi slopes (BLOOM, Falcon with alibi), else None

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def _class_name(module: nn.Module) -> str:
    return type(module).__name__.lower()


def _attention_child(layer: nn.Module) -> str | None:
    for name, child in layer.named_children():
        if "attention" in _class_name(child) and "norm" not in _class_name(child):
            return name
    return None


def _mlp_child(layer: nn.Module, attention: str) -> str | None:
    for name, _child in layer.named_children():
        if name != attention and name in MLP_NAMES:
            return name
    for name, child in layer.named_children():
        kind = _class_name(child)
        if name != attention and any(word in kind for word in ("mlp", "moe", "feedforward", "experts")):
            return name
    return None


def _router(layer: nn.Module, mlp: str | None, n_experts: int) -> str | None:
    """The module inside the MLP that scores every expert: one weight row per expert."""
    if mlp is None or n_experts == 0:
        return None
    for name, module in getattr(layer, mlp).named_modules():
        if not name:
            continue
        named_like = name.split(".")[-1] in ROUTER_NAMES or "router" in _class_name(module)
        weight = getattr(module, "weight", None)
        per_expert = isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[0] == n_experts
        if named_like and per_expert:
            return f"{mlp}.{name}"
    return None


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The longest ``nn.ModuleList`` whose items all have an attention child, and its path."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if all(_attention_child(item) is not None for item in module):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise BackendError(
            f"{type(model).__name__}: no list of decoder layers found (an nn.ModuleList of modules "
            "that each have an attention child)"
        )
    return best


def _final_norm(model: nn.Module, layers_path: str) -> str:
    parent_path = layers_path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    norms = [name for name, child in parent.named_children() if "norm" in _class_name(child)]
    if not norms:
        raise BackendError(f"{type(model).__name__}: no final norm beside {layers_path}")
    return f"{parent_path}.{norms[-1]}" if parent_path else norms[-1]


def _text_config(model: nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _first(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _windows(config: Any, n_layers: int) -> list[int | None]:
    """Per-layer sliding window: the loaders' rule (:func:`~workbench.loading.families.window_per_layer`)."""
    return window_per_layer(config.to_dict(), n_layers)


def describe(hf_model: nn.Module) -> HFLayout:
    """Find the decoder layers, their parts, the final norm and the head sizes of ``hf_model``."""
    layers_path, layers = find_layers(hf_model)
    if getattr(hf_model, "config", None) is None:
        raise BackendError(f"{type(hf_model).__name__}: not a transformers model (it has no config)")
    config = _text_config(hf_model)
    n_experts = int(_first(config, "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts",
                           default=0))
    top_k = int(_first(config, "num_experts_per_tok", "moe_topk", "top_k", default=0))
    windows = _windows(config, len(layers))
    parts = []
    for index, layer in enumerate(layers):
        attention = _attention_child(layer)
        mlp = _mlp_child(layer, attention)
        parts.append(LayerParts(index, attention, mlp, _router(layer, mlp, n_experts), windows[index]))
    n_heads = int(_first(config, "num_attention_heads", "n_head", "num_heads"))
    d_head = int(_first(config, "head_dim", default=0) or _first(config, "hidden_size", "n_embd") // n_heads)
    scale = getattr(getattr(layers[0], parts[0].attention), "scaling", None)
    uses_alibi = getattr(config, "model_type", None) == "bloom" or getattr(config, "alibi", False) is True
    return HFLayout(
        alibi=alibi_slopes(n_heads) if uses_alibi else None,
        layers_path=layers_path,
        layers=tuple(parts),
        final_norm_path=_final_norm(hf_model, layers_path),
        n_heads=n_heads,
        d_head=d_head,
        scale=float(scale) if isinstance(scale, int | float) else d_head**-0.5,
        n_experts=n_experts,
        top_k=top_k,
        norm_topk_prob=bool(getattr(config, "norm_topk_prob", True)),
    )


def _envoy(root: Any, path: str) -> Any:
    """The nnsight envoy at a dotted module path (``"model.layers"``, ``"mlp.gate"``)."""
    for part in path.split(".") if path else []:
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root
