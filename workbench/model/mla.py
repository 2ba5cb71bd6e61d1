"""Multi-head latent attention (DeepSeek V2/V3): low-rank queries and keys/values, a shared RoPE key.

Shapes: B batch, T new tokens, P cached tokens, S = P + T keys, H heads, N no-RoPE dims per
query/key head (``d_head``), R RoPE dims (``mla_rope_dim``), Dv value dims, L the latent rank
(``mla_kv_rank``), Lq the query rank (``mla_q_rank``).

Each token is compressed to a latent ``c = norm(W_dkv x)`` (L values) plus one RoPE key shared by
every head (R values); the cache keeps exactly these two (what ``workbench kv`` charges), and
per-head keys ``[W_uk c ; rope(k_R)]`` and values ``W_uv c`` are expanded from it when attending.
Queries are ``[W_uq c_q ; rope(W_qr c_q)]`` with ``c_q = norm(W_dq x)`` (or one full projection
when there is no query rank). DeepSeek's RoPE pairs dims as (0,1), (2,3)...; the loader permutes
those rows into the rotate-half layout used here, which gives the same scores.

Hooks: ``hook_latent [batch, pos, L]`` (what is cached) and, per head, ``hook_q [batch, pos, H,
N+R]``, ``hook_k [batch, pos, H, N+R]`` (before RoPE), ``hook_v [batch, pos, H, Dv]`` for the
new tokens; edits to hook_k/hook_v act on this forward only (past keys come from the cache).
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.config import DecoderConfig
from workbench.model.attention import Attention
from workbench.model.context import ForwardContext
from workbench.model.hooks import HookPoint
from workbench.model.kv_cache import KVCache
from workbench.model.norms import RMSNorm
from workbench.model.positions import apply_rope


class LatentAttention(Attention):
    """MLA on the same two attention paths (SDPA and explicit chunks) as :class:`Attention`."""

    def __init__(self, config: DecoderConfig, layer: int) -> None:
        super().__init__(config, layer)
        self.hook_latent = HookPoint()  # [batch, pos, mla_kv_rank] the cached latent

    def _projections(self, config: DecoderConfig) -> None:
        H, N, R = config.n_heads, config.d_head, config.mla_rope_dim
        self.rank, self.rope_dim, self.value_dim = config.mla_kv_rank, R, config.value_dim
        d_model, d_qk = config.d_model, N + R
        if config.mla_q_rank is None:
            self.q, self.q_a, self.q_a_norm, self.q_b = nn.Linear(d_model, H * d_qk, bias=False), None, None, None
        else:
            self.q = None
            self.q_a = nn.Linear(d_model, config.mla_q_rank, bias=config.qkv_bias)
            self.q_a_norm = RMSNorm(config.mla_q_rank, config.norm_eps)
            self.q_b = nn.Linear(config.mla_q_rank, H * d_qk, bias=False)
        self.kv_a = nn.Linear(d_model, self.rank + R, bias=config.qkv_bias)  # latent + RoPE key
        self.kv_a_norm = RMSNorm(self.rank, config.norm_eps)
        self.kv_b = nn.Linear(self.rank, H * (N + self.value_dim), bias=False)
        self.o = nn.Linear(H * self.value_dim, d_model, bias=config.attn_out_bias)

    def _expand(self, latent: torch.Tensor, k_rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys ``(B, t, H, N+R)`` and values ``(B, t, H, Dv)`` from ``latent (B, t, L)``
        and the shared RoPE key ``k_rot (B, t, R)``."""
        B, t, _ = latent.shape
        kv = self.kv_b(latent).view(B, t, self.n_heads, self.d_head + self.value_dim)
        k_nope, v = kv.split([self.d_head, self.value_dim], dim=-1)
        k = torch.cat([k_nope, k_rot[:, :, None].expand(B, t, self.n_heads, self.rope_dim)], dim=-1)
        return k, v

    def forward(self, x: torch.Tensor, ctx: ForwardContext, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        N = self.d_head
        q = self.q(x) if self.q is not None else self.q_b(self.q_a_norm(self.q_a(x)))
        q = self.hook_q(q.view(B, T, self.n_heads, N + self.rope_dim))
        latent, k_rot = self.kv_a(x).split([self.rank, self.rope_dim], dim=-1)
        latent = self.hook_latent(self.kv_a_norm(latent))  # (B, T, L)
        k, v = self._expand(latent, k_rot)
        k, v = self.hook_k(k), self.hook_v(v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, *)
        q = torch.cat([q[..., :N], apply_rope(q[..., N:], ctx.cos, ctx.sin)], dim=-1)
        k = torch.cat([k[..., :N], apply_rope(k[..., N:], ctx.cos, ctx.sin)], dim=-1)
        q = self.hook_rot_q(q.transpose(1, 2)).transpose(1, 2)  # views: free when unwatched
        k = self.hook_rot_k(k.transpose(1, 2)).transpose(1, 2)
        if cache is not None:
            cached = cache.keys[self.layer]
            past = 0 if cached is None else cached.shape[2]
            shared_rot = apply_rope(k_rot[:, None], ctx.cos, ctx.sin)  # (B, 1, T, R)
            all_latent, all_rot = cache.update(self.layer, latent[:, None], shared_rot)  # (B, 1, S, *)
            if past:
                k_past, v_past = self._expand(all_latent[:, 0, :past], all_rot[:, 0, :past])
                k = torch.cat([k_past.transpose(1, 2), k], dim=2)
                v = torch.cat([v_past.transpose(1, 2), v], dim=2)
        return self._attend(q, k, v, ctx, self._wants_explicit(ctx))
