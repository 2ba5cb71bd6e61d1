"""The hook points inside a norm, as TransformerLens names them, at no cost when unwatched.

Every norm has ``hook_scale`` ``[batch, pos, 1]`` (the divisor: ``sqrt(mean(x^2) + eps)`` for
RMSNorm, ``sqrt(var(x) + eps)`` for LayerNorm, in fp32), ``hook_normalized`` ``[batch, pos,
d_model]`` (``x / scale``, centred first for LayerNorm, before the weight and bias) and
``hook_out`` (the norm's output). The norm's own output is what it computed without the hooks,
to the last bit, unless a hook edits the scale or the normalized stream (returns another tensor
or writes in place), or autograd is recording (so that gradients at these points exist): then
the output is rebuilt from the hooked value.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.model.hooks import HookPoint


def add_norm_hooks(norm: nn.Module) -> None:
    """Give ``norm`` its three hook points."""
    norm.hook_scale = HookPoint()  # [batch, pos, 1] fp32
    norm.hook_normalized = HookPoint()  # [batch, pos, d_model] before weight and bias
    norm.hook_out = HookPoint()  # [batch, pos, d_model]


def pass_through(point: HookPoint, value: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``point(value)`` and whether a hook replaced or edited it (the version counter moves on
    every in-place write). It also counts as edited (the output is rebuilt from it, equal up to
    rounding) when autograd records it, so that a gradient at the point exists, and under
    ``torch.inference_mode``, where tensors keep no version counter."""
    if value.is_inference() or value.requires_grad:
        return point(value), True
    version = value._version
    out = point(value)
    return out, out is not value or out._version != version


def watch_scale(point: HookPoint, inv_rms: torch.Tensor) -> torch.Tensor:
    """Show RMSNorm's scale ``1 / inv_rms`` to ``point``; the (possibly edited) ``inv_rms``."""
    scale, changed = pass_through(point, inv_rms.reciprocal())
    return scale.reciprocal() if changed else inv_rms


def watched_layer_norm(norm: nn.LayerNorm, x: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """Run LayerNorm's scale and normalized stream through their hook points; ``fused`` (the
    kernel's output for ``x``) unless a hook edited one of them."""
    x32 = x.to(torch.float32)
    centered = x32 - x32.mean(-1, keepdim=True)
    scale = (centered.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    scale, scale_changed = pass_through(norm.hook_scale, scale)
    normalized, normalized_changed = pass_through(norm.hook_normalized, (centered / scale).to(x.dtype))
    if not (scale_changed or normalized_changed):
        return fused
    if norm.weight is not None:
        normalized = normalized * norm.weight
    return normalized + norm.bias if norm.bias is not None else normalized
