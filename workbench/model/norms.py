"""Normalisation layers of the hooked decoder: RMSNorm (plain or Gemma's ``1 + weight``) and LayerNorm,
each with the hook points ``hook_scale``, ``hook_normalized`` and ``hook_out`` (see
:mod:`workbench.model.norm_hooks`).

Shapes: ``[..., d]`` in, the same out; statistics over the last axis.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.config import DecoderConfig
from workbench.model.norm_hooks import add_norm_hooks, watch_scale, watched_layer_norm


class RMSNorm(nn.Module):
    """``x / rms(x) * (offset + weight)``, the statistic in fp32.

    ``offset`` 0 is Llama's form (the product taken in the input dtype, as Llama does); Gemma
    stores ``weight - 1`` and multiplies by ``1 + weight`` in fp32 before casting back.
    """

    def __init__(self, d_model: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model) if offset == 0 else torch.zeros(d_model))
        self.eps = eps
        self.offset = offset
        add_norm_hooks(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        normed = x.to(torch.float32)
        inv_rms = torch.rsqrt(normed.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.hook_scale.active:
            inv_rms = watch_scale(self.hook_scale, inv_rms)
        normed = normed * inv_rms
        if self.offset:  # hook_normalized stays fp32 here, as the product is taken
            normed = self.hook_normalized(normed)
            return self.hook_out((normed * (self.offset + self.weight.float())).to(dtype))
        return self.hook_out(self.weight * self.hook_normalized(normed.to(dtype)))


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` with TransformerLens's ``hook_scale`` / ``hook_normalized`` (see
    :mod:`workbench.model.norm_hooks`); the fused kernel's output is kept unless a hook edits them."""

    def __init__(self, d_model: int, eps: float, bias: bool = True) -> None:
        super().__init__(d_model, eps=eps, bias=bias)
        add_norm_hooks(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.hook_scale.active or self.hook_normalized.active:
            out = watched_layer_norm(self, x, out)
        return self.hook_out(out)


def make_norm(config: DecoderConfig, width: int | None = None) -> nn.Module:
    """The family's norm over ``width`` features (default d_model)."""
    width = width or config.d_model
    if config.norm == "rmsnorm":
        return RMSNorm(width, config.norm_eps, config.norm_offset)
    return LayerNorm(width, config.norm_eps, bias=config.norm_bias)
