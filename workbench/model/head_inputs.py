"""Per-head views of attention: its output split by head, and its inputs split by head.

Shapes: B batch, T tokens, H query heads, K key/value heads, D d_head, d d_model.

* ``attn.hook_result`` ``[B, T, H, d]``: what each head writes into the residual stream,
  ``z_h @ W_O[h]`` (TransformerLens's ``result``; the output bias ``b_O`` is in no head). It is
  computed only when watched; the attention output stays the fused projection, to the last
  bit, unless a hook edits the result or autograd records it (then it is the sum of the heads
  plus ``b_O``, so that a gradient at ``hook_result`` exists).
* The per-head inputs (TransformerLens's ``use_split_qkv_input`` / ``use_attn_in``): the block
  copies ``resid_pre`` once per head, ``blocks.{l}.hook_q_input`` ``[B, T, H, d]``,
  ``hook_k_input`` / ``hook_v_input`` ``[B, T, K, d]`` (one per key/value head) or one
  ``hook_attn_in`` ``[B, T, H, d]`` shared by q, k and v, applies ``ln1`` to each copy and
  projects each head from its own copy. They exist only behind the model's switch
  (``model.set_use_split_qkv_input(True)`` / ``set_use_attn_in(True)`` add the hook points,
  ``False`` removes them, so that every hook point of a model fires on every forward): the per-head path holds
  H copies of the residual stream and sums in another order, so logits may differ from the
  fused path in the last bits (not beyond 1e-5 on the families tests).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workbench.model.norm_hooks import pass_through


def head_in_weights(linear: nn.Linear, n_heads: int, d_head: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W [heads, d, D], b [heads, D] or None)`` of a fused q/k/v projection."""
    weight = linear.weight.view(n_heads, d_head, -1).transpose(1, 2)
    bias = None if linear.bias is None else linear.bias.view(n_heads, d_head)
    return weight, bias


def head_out_weights(o: nn.Linear, n_heads: int, d_head: int) -> torch.Tensor:
    """``W_O [heads, D, d]``: the output projection ``o`` split per head (a view of its weight)."""
    return o.weight.view(-1, n_heads, d_head).permute(1, 2, 0)


def project_per_head(
    attn: nn.Module, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q ``[B, T, H, D]``, k and v ``[B, T, K, D]`` from per-head (normalised) inputs."""
    out = []
    for linear, x, heads in ((attn.q, q_in, attn.n_heads), (attn.k, k_in, attn.n_kv_heads), (attn.v, v_in, attn.n_kv_heads)):
        weight, bias = head_in_weights(linear, heads, attn.d_head)
        y = torch.einsum("bthd,hdk->bthk", x, weight)
        out.append(y if bias is None else y + bias)
    return out[0], out[1], out[2]


def per_head_result(attn: nn.Module, z: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """Run ``[B, T, H, d]`` per-head outputs through ``attn.hook_result``; ``fused`` (the
    projection's own output) unless a hook edited them."""
    B, T, H, D = z.shape
    result, changed = pass_through(attn.hook_result, torch.einsum("bthk,hkd->bthd", z, head_out_weights(attn.o, H, D)))
    if not changed:
        return fused
    out = result.sum(dim=2)
    return out if attn.o.bias is None else out + attn.o.bias


def split_attention(block: Any, x: torch.Tensor, ctx: Any, cache: Any) -> torch.Tensor:
    """The attention sublayer of ``block`` on per-head copies of ``x`` (``resid_pre``)."""
    attn = block.attn
    B, T, d = x.shape
    group = attn.n_heads // attn.n_kv_heads
    if "hook_attn_in" in block._modules:
        shared = block.hook_attn_in(x[:, :, None].expand(B, T, attn.n_heads, d).clone())
        # A key/value head reads the copy of the first query head of its group.
        q_in, k_in, v_in = shared, shared[:, :, ::group], shared[:, :, ::group]
    else:
        q_in = block.hook_q_input(x[:, :, None].expand(B, T, attn.n_heads, d).clone())
        k_in = block.hook_k_input(x[:, :, None].expand(B, T, attn.n_kv_heads, d).clone())
        v_in = block.hook_v_input(x[:, :, None].expand(B, T, attn.n_kv_heads, d).clone())
    return attn((block.ln1(q_in), block.ln1(k_in), block.ln1(v_in)), ctx, cache)
