"""Normalisation layers of the hooked decoder: RMSNorm (plain or Gemma's ``1 + weight``) and LayerNorm.

Shapes: ``[..., d]`` in, the same out; statistics over the last axis.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.config import DecoderConfig


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        normed = x.to(torch.float32)
        normed = normed * torch.rsqrt(normed.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (normed * (self.offset + self.weight.float())).to(dtype)
        return self.weight * normed.to(dtype)


def make_norm(config: DecoderConfig, width: int | None = None) -> nn.Module:
    """The family's norm over ``width`` features (default d_model)."""
    width = width or config.d_model
    if config.norm == "rmsnorm":
        return RMSNorm(width, config.norm_eps, config.norm_offset)
    return nn.LayerNorm(width, eps=config.norm_eps, bias=config.norm_bias)
