"""Causal self-attention with two paths behind one switch.

Shapes: B batch, T new tokens in this forward, S keys (cached + new), H query heads,
K key/value heads (H % K == 0; MHA K == H, MQA K == 1), D d_head, c a chunk of queries.

* The fast path calls ``scaled_dot_product_attention`` and never materialises scores.
* The explicit path computes scores and probabilities in query chunks (see
  :class:`~workbench.model.context.AttentionOptions`), so peak memory is O(B x H x chunk x S).
  It runs only when something asks for attention: an observer (a recorder reducing statistics
  chunk by chunk), a hook on ``hook_pattern`` or ``hook_attn_scores`` (which then see the full
  ``[B, H, T, S]`` tensor), or ``explicit=True``; all come with the forward's context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench.config import DecoderConfig
from workbench.model.context import AttentionChunk, ForwardContext, query_chunks
from workbench.model.head_inputs import per_head_result, project_per_head
from workbench.model.hooks import HookPoint
from workbench.model.kv_cache import KVCache
from workbench.model.norms import RMSNorm
from workbench.model.positions import apply_rope
from workbench.model.softcap import softcap


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads, RoPE or ALiBi, optional window."""

    def __init__(self, config: DecoderConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.d_head = config.n_heads, config.kv_heads, config.d_head
        self.scale = config.scale
        self.window = config.window_for_layer(layer)
        self._projections(config)
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head] after RoPE
        self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head] after RoPE
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model] per-head output, no b_O
        # Family mechanisms, each None unless the config switches it on.
        self.q_norm = RMSNorm(config.d_head, config.norm_eps, config.norm_offset) if config.qk_norm else None
        self.k_norm = RMSNorm(config.d_head, config.norm_eps, config.norm_offset) if config.qk_norm else None
        self.clip_qkv = config.clip_qkv
        self.softcap = config.attn_softcap  # scores capped before the mask (explicit path only)
        self.local_rope = config.local_rope_theta is not None and self.window is not None

    def _projections(self, config: DecoderConfig) -> None:
        """The q, k, v and o projections (MLA has its own)."""
        d_attn, d_kv = config.n_heads * config.d_head, config.kv_heads * config.d_head
        self.q = nn.Linear(config.d_model, d_attn, bias=config.qkv_bias)
        self.k = nn.Linear(config.d_model, d_kv, bias=config.qkv_bias)
        self.v = nn.Linear(config.d_model, d_kv, bias=config.qkv_bias)
        self.o = nn.Linear(d_attn, config.d_model, bias=config.attn_out_bias)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, cache: KVCache | None) -> torch.Tensor:
        if isinstance(x, tuple):  # per-head inputs (see workbench.model.head_inputs)
            q, k, v = project_per_head(self, *x)
            B, T = q.shape[:2]
        else:
            B, T, _ = x.shape
            q, k, v = self.q(x), self.k(x), self.v(x)
        if self.clip_qkv is not None:  # MPT
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        q, k = q.view(B, T, self.n_heads, self.d_head), k.view(B, T, self.n_kv_heads, self.d_head)
        if self.q_norm is not None:  # QK-norm: hook_q and hook_k see the normalised heads
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.hook_q(q), self.hook_k(k)
        v = self.hook_v(v.view(B, T, self.n_kv_heads, self.d_head))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if ctx.cos is not None:
            cos, sin = (ctx.cos_local, ctx.sin_local) if self.local_rope else (ctx.cos, ctx.sin)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            q = self.hook_rot_q(q.transpose(1, 2)).transpose(1, 2)  # views: free when unwatched
            k = self.hook_rot_k(k.transpose(1, 2)).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, K, S, D)
        return self._attend(q, k, v, ctx, self._wants_explicit(ctx))

    def _wants_explicit(self, ctx: ForwardContext) -> bool:
        """True when the explicit path must run (something records attention, or a soft-cap)."""
        return (
            ctx.options.explicit
            or self.softcap is not None  # SDPA cannot cap scores
            or ctx.options.observer is not None
            or self.hook_pattern.active
            or self.hook_attn_scores.active
        )

    def _attend(self, q, k, v, ctx: ForwardContext, explicit: bool) -> torch.Tensor:
        """Attention of rotated ``q (B, H, T, D)`` over ``k, v (B, K, S, D or Dv)``, then ``o``."""
        B, _, T, _ = q.shape
        z = self._explicit(q, k, v, ctx) if explicit else self._fast(q, k, v, ctx)
        z = self.hook_z(z.transpose(1, 2))  # (B, T, H, Dv)
        out = self.o(z.reshape(B, T, -1))
        return per_head_result(self, z, out) if self.hook_result.active else out

    def _alibi_bias(self, ctx: ForwardContext, query_index: torch.Tensor) -> torch.Tensor:
        """ALiBi's -m_h * (i - j), as ``(1, H, c, S)``."""
        distance = (ctx.key_index[None, :] - query_index[:, None]).to(torch.float32)
        return (ctx.alibi[:, None, None] * distance[None])[None]

    def _fast(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext):
        mask = ctx.visible(self.window)
        kwargs = {}
        if self.n_kv_heads != self.n_heads:
            if mask is None and ctx.alibi is None:
                kwargs["enable_gqa"] = True
            else:
                group = self.n_heads // self.n_kv_heads
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if ctx.alibi is not None:
            visible = ctx.visible_or_causal(self.window)
            bias = self._alibi_bias(ctx, ctx.query_index).to(q.dtype)
            mask = bias.masked_fill(~visible, float("-inf"))
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, scale=self.scale, **kwargs)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, **kwargs)

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext):
        B, H, T, D = q.shape
        K, S, group = self.n_kv_heads, k.shape[2], self.n_heads // self.n_kv_heads
        visible_all = ctx.visible_or_causal(self.window)  # (B or 1, 1, T, S)
        full = self.hook_pattern.active or self.hook_attn_scores.active
        max_rows = T if full else max(1, ctx.options.chunk_rows)
        observer = ctx.options.observer
        # Scale q once (T x D) rather than every score (T x S); groups of query heads share a
        # kv head, so each group's rows are stacked into one matmul against its K and V.
        q_grouped = (q * self.scale).view(B, K, group, T, D)
        plain_causal = ctx.key_valid is None and self.window is None
        outputs = []
        for start, stop in query_chunks(T, S - T, max_rows, None if full else ctx.keys_budget):
            c = stop - start
            visible = visible_all[:, :, start:stop]
            n = self._key_limit(ctx, visible, S - T + stop)
            visible = visible[..., :n]
            q_chunk = q_grouped[:, :, :, start:stop].reshape(B, K, group * c, D)
            scores = (q_chunk @ k[:, :, :n].transpose(-1, -2)).view(B, H, c, n)
            query_index = ctx.query_index[start:stop]
            if ctx.alibi is not None:
                scores = scores + self._alibi_bias(ctx, query_index)[..., :n].to(scores.dtype)
            if self.softcap is not None:  # observers and hooks see the capped scores the softmax sees
                scores = softcap(scores, self.softcap)
            # Adding a 0 / -inf bias (broadcast over heads) is several times cheaper than
            # masked_fill with a broadcast boolean mask. Under a plain causal mask every row sees
            # every key before the chunk's first query, so only the last c keys need it.
            first = S - T + start if plain_causal else 0
            bias = torch.where(visible[..., first:], 0.0, float("-inf")).to(scores.dtype)
            scores[..., first:].add_(bias)
            if full:
                scores = self.hook_attn_scores(scores)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            if full:
                probs = self.hook_pattern(probs)
            if observer is not None:
                # Unless a hook saw the scores (and may hold them), they are dead after this.
                observer(AttentionChunk(self.layer, start, scores, probs, visible, query_index,
                                             self.scale, S, shared=first, writable=not full,
                                             alibi=ctx.alibi))
            z = probs.view(B, K, group * c, n) @ v[:, :, :n]  # (B, K, g*c, Dv)
            outputs.append(z.view(B, H, c, v.shape[-1]))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)

    @staticmethod
    def _key_limit(ctx: ForwardContext, visible: torch.Tensor, causal_limit: int) -> int:
        """How many leading keys a chunk needs: up to its last query's own key, unless padding
        made a row see every key (see ForwardContext._build)."""
        S = visible.shape[-1]
        if causal_limit < S and ctx.key_valid is not None and bool(visible[..., causal_limit:].any()):
            return S
        return causal_limit
