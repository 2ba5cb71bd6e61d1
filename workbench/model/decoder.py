"""The hooked decoder: one pre-norm decoder-only transformer for every supported family.

Shapes: B batch, T tokens, d d_model, V vocab. The residual stream flows
``hook_embed (+ hook_pos_embed) -> blocks[l] -> ln_final (hook_final) -> unembed (hook_logits,
``model(...)`` only)``; each block is
``resid_pre -> +attn(ln1) -> resid_mid -> +mlp(ln2) -> resid_post``. Hook point names follow
TransformerLens (see ``model.hook_dict`` for the full list).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from workbench.config import DecoderConfig
from workbench.model.attention import Attention
from workbench.model.context import AttentionOptions, ForwardContext, chunk_keys
from workbench.model.head_inputs import split_attention
from workbench.model.hooks import HookPoint, hooks, name_hook_points
from workbench.model.kv_cache import KVCache
from workbench.model.mla import LatentAttention
from workbench.model.mlp import MLP, MoE
from workbench.model.norms import LayerNorm, make_norm
from workbench.model.positions import alibi_slopes, rope_cos_sin, rope_inv_freq, sinusoidal_table
from workbench.model.running import RunMixin
from workbench.model.softcap import CappedUnembed
from workbench.model.text import TextMixin, is_text
from workbench.model.weights_view import WeightsMixin


class Block(nn.Module):
    """One pre-norm transformer block."""

    def __init__(self, config: DecoderConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.ln1 = make_norm(config)
        self.attn = (LatentAttention if config.mla_kv_rank is not None else Attention)(config, layer)
        self.ln2 = make_norm(config)
        # Gemma 2's sandwich: each sublayer's output is normalised again before the residual add.
        self.ln1_post = make_norm(config) if config.post_norms else None
        self.ln2_post = make_norm(config) if config.post_norms else None
        self.mlp = MoE(config) if config.is_moe_layer(layer) else MLP(config)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_in = HookPoint()  # [batch, pos, d_model] resid_mid, before ln2
        # The model's switches add per-head copies of resid_pre (see workbench.model.head_inputs):
        # hook_q_input [batch, pos, head, d_model], hook_k_input / hook_v_input [batch, pos,
        # kv_head, d_model], or hook_attn_in [batch, pos, head, d_model].

    def forward(self, x: torch.Tensor, ctx: ForwardContext, cache: KVCache | None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        if "hook_q_input" in self._modules or "hook_attn_in" in self._modules:
            attn_out = split_attention(self, x, ctx, cache)
        else:
            attn_out = self.attn(self.ln1(x), ctx, cache)
        if self.ln1_post is not None:
            attn_out = self.ln1_post(attn_out)
        x = self.hook_resid_mid(x + self.hook_attn_out(attn_out))
        mlp_out = self.mlp(self.ln2(self.hook_mlp_in(x)))
        if self.ln2_post is not None:
            mlp_out = self.ln2_post(mlp_out)
        return self.hook_resid_post(x + self.hook_mlp_out(mlp_out))


class HookedDecoder(TextMixin, RunMixin, WeightsMixin, nn.Module):
    """A decoder-only transformer with hook points everywhere.

    ``model(input_ids)`` returns logits ``[B, T, V]``. ``attention_mask`` ``[B, S]`` (1 = real
    token, 0 = padding, covering cached tokens too) handles padded batches; ``cache`` (a
    :class:`KVCache`) enables incremental decoding. :meth:`hidden` returns the final normalised
    residual stream, for callers that unembed in chunks to bound memory at long context.
    ``input_ids`` may also be a string or a list of strings (tokenized with :meth:`to_tokens`).

    The TransformerLens-style library (text methods, ``run_with_cache``, ``run_with_hooks``,
    weight views) comes from the mixins: :mod:`workbench.model.text`,
    :mod:`workbench.model.running`, :mod:`workbench.model.weights_view`.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = (
            nn.Embedding(config.max_positions, config.d_model) if config.positions == "learned" else None
        )
        if config.positions == "sinusoidal":
            table = sinusoidal_table(config.max_positions, config.d_model)
            self.register_buffer("sinusoidal", table, persistent=False)
        self.embed_norm = LayerNorm(config.d_model, config.norm_eps) if config.embed_norm else None
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.ln_final = make_norm(config)
        self.unembed = (
            CappedUnembed(config.d_model, config.vocab_size, config.final_softcap)
            if config.final_softcap is not None
            else nn.Linear(config.d_model, config.vocab_size, bias=False)
        )
        if config.tie_embeddings:
            self.unembed.weight = self.embed.weight
        if config.positions == "rope":
            inv_freq, factor = rope_inv_freq(config)
            self.register_buffer("rope_inv_freq", inv_freq, persistent=False)
            self.rope_attention_factor = factor
            if config.local_rope_theta is not None:
                self.register_buffer("rope_inv_freq_local", self._local_inv_freq(), persistent=False)
        if config.positions == "alibi":
            slopes = alibi_slopes(config.n_heads, config.alibi_bias_max)
            self.register_buffer("alibi_slopes", slopes, persistent=False)
        self.hook_tokens = HookPoint()  # [batch, pos] the input token ids
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_final = HookPoint()  # [batch, pos, d_model] after ln_final
        self.hook_logits = HookPoint()  # [batch, pos, vocab]: model(...) only, hidden() stops before
        self.hook_dict = name_hook_points(self)
        self._attention_options = AttentionOptions()

    def reset_buffers(self) -> None:
        """Recompute the derived (non-persistent) buffers, e.g. after building on ``meta``."""
        device = self.embed.weight.device
        if self.config.positions == "rope":
            self.rope_inv_freq = rope_inv_freq(self.config)[0].to(device)
            if self.config.local_rope_theta is not None:
                self.rope_inv_freq_local = self._local_inv_freq().to(device)
        if self.config.positions == "alibi":
            self.alibi_slopes = alibi_slopes(self.config.n_heads, self.config.alibi_bias_max).to(device)
        if self.config.positions == "sinusoidal":
            self.sinusoidal = sinusoidal_table(self.config.max_positions, self.config.d_model).to(device)

    def _local_inv_freq(self) -> torch.Tensor:
        """Gemma 3's sliding-window layers: plain RoPE at ``local_rope_theta``."""
        return rope_inv_freq(self.config.replace(rope_theta=self.config.local_rope_theta, rope_scaling=None))[0]

    @property
    def device(self) -> torch.device:
        # After accelerate's dispatch an offloaded embedding sits on "meta"; inputs belong on
        # the execution device accelerate's root hook moves them to.
        hook = getattr(self, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.hook_logits(self.unembed(self.hidden(input_ids, attention_mask, cache, position_ids)))

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final normalised residual stream ``[B, T, d_model]`` (logits = unembed of it)."""
        if is_text(input_ids):
            input_ids = self.to_tokens(input_ids)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, pos], got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        device = self.device
        input_ids = self.hook_tokens(input_ids.to(device))
        past = cache.length if cache is not None else 0
        query_index = torch.arange(past, past + T, device=device)
        if position_ids is None:
            position_ids = query_index[None].expand(B, T)
        position_ids = position_ids.to(device)
        ctx = self._context(query_index, position_ids, attention_mask, past)
        ctx.options = self._attention_options
        if ctx.options.chunk_bytes is not None:
            ctx.keys_budget = chunk_keys(ctx.options.chunk_bytes, B, self.config.n_heads)
        x = self.embed(input_ids)
        if self.config.embed_scale:  # Gemma: sqrt(d_model), rounded to the model's dtype first
            x = x * torch.tensor(self.config.d_model**0.5, dtype=x.dtype)
        if self.embed_norm is None:
            x = self.hook_embed(x)
        if self.pos_embed is not None:
            if int(position_ids.max()) >= self.config.max_positions:
                raise IndexError(
                    f"position {int(position_ids.max())} is past the learned position table "
                    f"({self.config.max_positions} positions)"
                )
            x = x + self.hook_pos_embed(self.pos_embed(position_ids))
        elif self.config.positions == "sinusoidal":
            x = x + self.hook_pos_embed(self.sinusoidal[position_ids].to(x.dtype))
        if self.embed_norm is not None:  # BLOOM: hook_embed after the norm, as TransformerLens
            x = self.hook_embed(self.embed_norm(x))
        for block in self.blocks:
            x = block(x, ctx, cache)
        return self.hook_final(self.ln_final(x))

    def _context(self, query_index, position_ids, attention_mask, past) -> ForwardContext:
        device = query_index.device
        key_index = torch.arange(0, past + query_index.shape[0], device=device)
        key_valid = None
        if attention_mask is not None:
            key_valid = attention_mask.to(device=device, dtype=torch.bool)
            if key_valid.shape[1] != key_index.shape[0]:
                raise ValueError(
                    f"attention_mask covers {key_valid.shape[1]} tokens, expected {key_index.shape[0]} "
                    "(cached + new)"
                )
            if bool(key_valid.all()):
                key_valid = None
        ctx = ForwardContext(query_index=query_index, key_index=key_index, key_valid=key_valid)
        if self.config.positions == "rope":
            inv_freq = self.rope_inv_freq
            if self.config.rope_scaling is not None and self.config.rope_scaling.kind in ("dynamic", "longrope"):
                # transformers grows the base (dynamic) or picks LongRoPE's factor set with the
                # largest position in this forward
                seq_len = int(position_ids.max()) + 1
                inv_freq = rope_inv_freq(self.config, seq_len=seq_len)[0].to(device)
            ctx.cos, ctx.sin = rope_cos_sin(
                inv_freq, position_ids, self.rope_attention_factor, self.dtype
            )
            if self.config.local_rope_theta is not None:
                ctx.cos_local, ctx.sin_local = rope_cos_sin(self.rope_inv_freq_local, position_ids, 1.0, self.dtype)
        elif self.config.positions == "alibi":
            ctx.alibi = self.alibi_slopes
        return ctx

    @contextlib.contextmanager
    def attention_options(self, **changes: Any) -> Iterator[AttentionOptions]:
        """Run the forwards inside the block with these :class:`AttentionOptions` changed, e.g.
        ``explicit=True, chunk_rows=5``; the previous options come back on exit.

        Only one observer at a time: a second ``observer`` (a ``record()`` inside another that
        records attention) raises ``RuntimeError`` instead of silently taking the first's place.
        """
        previous = self._attention_options
        if changes.get("observer") is not None and previous.observer is not None:
            raise RuntimeError("attention is already being recorded on this model: record() blocks that "
                               "record attention do not nest")
        self._attention_options = dataclasses.replace(previous, **changes)
        try:
            yield self._attention_options
        finally:
            self._attention_options = previous

    @property
    def current_attention_options(self) -> AttentionOptions:
        """The options forwards run with right now (read-only; change them with attention_options)."""
        return self._attention_options

    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True):
        """Context manager attaching ``[(selector, fn), ...]``; see :mod:`workbench.model.hooks`."""
        return hooks(self, fwd_hooks, bwd_hooks, reset_ctx=reset_hooks_end)

    def attention_modules(self) -> list[Attention]:
        return [block.attn for block in self.blocks]

    def fp32_tensor_names(self) -> set[str]:
        """State-dict names kept in fp32 whatever the model's dtype: a sigmoid router's weight and
        selection bias (DeepSeek V3), as transformers keeps them, since a bf16 bias would change
        which experts are chosen."""
        names = set()
        for name, module in self.named_modules():
            if isinstance(module, MoE) and module.score == "sigmoid":
                names.add(f"{name}.router.weight")
                if module.selection_bias is not None:
                    names.add(f"{name}.selection_bias")
        return names

    def n_params(self) -> int:
        """Parameters, counting tied embeddings once."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
