"""Analytic forward-pass FLOP count of a decoder, from its DecoderConfig and an input shape.

Convention (the one used by Kaplan et al. 2020, PaLM's MFU and most roofline tools):

* A multiply-add counts as **2 FLOPs**; a matmul of ``[N, a] @ [a, b]`` costs ``2 * N * a * b``.
* Only matmuls are counted: projections, attention scores (``q . k``), the attention-weighted
  sum of values, MLP / expert / router / shared-expert matrices and the unembedding. Norms,
  activations, softmax, RoPE, biases, residual adds and the embedding lookup are left out; they
  are O(tokens x d_model) each, small next to the O(tokens x d_model^2) matmuls.
* Attention counts only the **visible** query-key pairs: a causal query at absolute position
  ``p`` sees ``min(p + 1, window)`` keys, so a prefill of T tokens with no cache sees
  ``T * (T + 1) / 2`` pairs (not ``T^2``). Kernels that compute the full square and mask it do
  more arithmetic than this; the count is the useful work, which is what "achieved FLOP/s" and
  MFU are defined against. Padding is not subtracted.
* MoE layers count the router (``d_model x n_experts``), exactly ``top_k`` expert MLPs per token
  (each token is routed to ``top_k`` distinct experts, whatever the balance), and the shared
  expert with its ``d_model x 1`` gate when the config has one.
* Logits are computed for every position (as ``HookedDecoder.forward`` does), so the
  unembedding costs ``2 * tokens * d_model * vocab_size``.

Shapes: B batch, T new tokens, P tokens already in the KV cache (``past_len``), N = B x T.
Multi-head latent attention (``mla_kv_rank``) is counted as the hooked decoder runs it: the
query path (full, or down to ``mla_q_rank`` and up), the latent + RoPE-key projection, and the
expansion of every key's latent (cached ones too) into per-head keys and values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.config import DecoderConfig

COMPONENTS = (
    "attn_qkv",
    "attn_scores",
    "attn_weighted_sum",
    "attn_out",
    "mlp",
    "router",
    "experts",
    "shared_expert",
)


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward, by component (summed over layers), per layer, and in total."""

    total: int
    breakdown: dict[str, int]  # COMPONENTS plus "unembed", summed over layers
    per_layer: list[dict[str, int]] = field(default_factory=list)
    batch: int = 1
    seq_len: int = 1
    past_len: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "breakdown": dict(self.breakdown),
            "per_layer": [dict(layer) for layer in self.per_layer],
            "batch": self.batch,
            "seq_len": self.seq_len,
            "past_len": self.past_len,
            "convention": "2 FLOPs per multiply-add; matmuls only; causal visible pairs only",
        }


def visible_pairs(seq_len: int, past_len: int = 0, window: int | None = None) -> int:
    """Query-key pairs one head attends over: ``sum_{p=P}^{P+T-1} min(p + 1, window)``."""
    if seq_len < 0 or past_len < 0:
        raise ValueError(f"seq_len and past_len must be >= 0, got {seq_len}, {past_len}")
    first, last = past_len + 1, past_len + seq_len  # keys seen by the first and last query
    if window is None or last <= window:
        return (first + last) * seq_len // 2
    uncapped_last = max(first - 1, window)  # queries with first..window keys are not capped
    uncapped = (first + uncapped_last) * (uncapped_last - first + 1) // 2 if uncapped_last >= first else 0
    capped = last - max(first, window + 1) + 1
    return uncapped + capped * window


def _mlp_flops(config: DecoderConfig, tokens: int, d_hidden: int) -> int:
    matrices = 3 if config.gated_mlp else 2  # gate, up, down  |  up, down
    return 2 * tokens * matrices * config.d_model * d_hidden


def _mla_flops(config: DecoderConfig, batch: int, seq_len: int, past_len: int, pairs: int) -> dict[str, int]:
    """Multi-head latent attention's matmuls (see the module docstring)."""
    tokens, keys = batch * seq_len, batch * (past_len + seq_len)
    d_model, heads, rank, rope = config.d_model, config.n_heads, config.mla_kv_rank, config.mla_rope_dim
    d_qk, d_v = config.qk_dim, config.value_dim
    if config.mla_q_rank is None:
        queries = d_model * heads * d_qk
    else:
        queries = d_model * config.mla_q_rank + config.mla_q_rank * heads * d_qk
    expand = keys * rank * heads * (config.d_head + d_v)
    return {
        "attn_qkv": 2 * tokens * (queries + d_model * (rank + rope)) + 2 * expand,
        "attn_scores": 2 * pairs * heads * d_qk,
        "attn_weighted_sum": 2 * pairs * heads * d_v,
        "attn_out": 2 * tokens * heads * d_v * d_model,
    }


def layer_flops(
    config: DecoderConfig, layer: int, batch: int, seq_len: int, past_len: int = 0
) -> dict[str, int]:
    """FLOPs of block ``layer`` for ``batch`` x ``seq_len`` new tokens, by component."""
    tokens = batch * seq_len
    d_model, heads, kv_heads, d_head = config.d_model, config.n_heads, config.kv_heads, config.d_head
    pairs = batch * visible_pairs(seq_len, past_len, config.window_for_layer(layer))
    counts = dict.fromkeys(COMPONENTS, 0)
    if config.mla_kv_rank is not None:
        counts.update(_mla_flops(config, batch, seq_len, past_len, pairs))
    else:
        counts["attn_qkv"] = 2 * tokens * d_model * (heads + 2 * kv_heads) * d_head
        # Every query head does its own q.k and p.v, whether or not its K/V head is shared (GQA).
        counts["attn_scores"] = 2 * pairs * heads * d_head
        counts["attn_weighted_sum"] = 2 * pairs * heads * d_head
        counts["attn_out"] = 2 * tokens * heads * d_head * d_model
    if config.is_moe_layer(layer):
        counts["router"] = 2 * tokens * d_model * config.n_experts
        counts["experts"] = config.top_k * _mlp_flops(config, tokens, config.d_expert or config.d_mlp)
        if config.d_shared_expert:
            gate = 2 * tokens * d_model if config.shared_expert_gate else 0
            counts["shared_expert"] = _mlp_flops(config, tokens, config.d_shared_expert) + gate
    else:
        counts["mlp"] = _mlp_flops(config, tokens, config.d_mlp)
    return counts


def forward_flops(config: DecoderConfig, batch: int, seq_len: int, past_len: int = 0) -> FlopCount:
    """Analytic FLOPs of one forward of ``batch`` sequences of ``seq_len`` new tokens.

    ``past_len`` tokens are already in the KV cache (decode steps: ``seq_len=1``); they add
    attention work but no projection work. See the module docstring for the convention.
    """
    if batch <= 0 or seq_len <= 0:
        raise ValueError(f"batch and seq_len must be positive, got {batch}, {seq_len}")
    per_layer = [layer_flops(config, layer, batch, seq_len, past_len) for layer in range(config.n_layers)]
    breakdown = {name: sum(layer[name] for layer in per_layer) for name in COMPONENTS}
    breakdown["unembed"] = 2 * batch * seq_len * config.d_model * config.vocab_size
    return FlopCount(
        total=sum(breakdown.values()),
        breakdown=breakdown,
        per_layer=per_layer,
        batch=batch,
        seq_len=seq_len,
        past_len=past_len,
    )
