"""Parameter counts and weight bytes, from the shape alone.

``count_params`` counts what a config implies: embeddings (tied or not, learned positions),
attention (GQA-aware, biases, approximate for MLA), dense or gated MLPs, experts with their
router and shared expert, and the norms. ``weights_bytes`` stores them: by default in the
config's quantisation or dtype; published FP8 checkpoints (Meta's and NVIDIA's Llama FP8,
DeepSeek-V3) quantise the linear layers only, so under ``fp8`` the token embedding, the LM
head and the norms stay in 16 bits (the model's compute dtype) unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Collection

from workbench.config import DecoderConfig
from workbench.errors import PlanError
from workbench.memory.dtypes import compute_dtype, storage_bytes, storage_type

# What FP8 checkpoints keep in 16 bits (HF quantization_config "ignored_layers" / the tensors
# named in the checkpoint's scales): the embedding table and the LM head; norms are vectors.
FP8_KEEP_16BIT = ("embeddings", "lm_head")


def check_tp(config: DecoderConfig, tp: int) -> None:
    """Tensor parallelism splits attention heads: tp must divide n_heads."""
    if tp < 1 or config.n_heads % tp:
        raise PlanError(f"tp must be >= 1 and divide n_heads ({config.n_heads}), got {tp}")


def _mlp_params(config: DecoderConfig, width: int) -> int:
    gated = config.gated_mlp
    params = (3 if gated else 2) * config.d_model * width
    return params + ((2 if gated else 1) * width + config.d_model if config.mlp_bias else 0)


def _attention_params(config: DecoderConfig) -> int:
    d, heads, kv, d_head = config.d_model, config.n_heads, config.kv_heads, config.d_head
    if config.mla_kv_rank is not None:  # approximate: full-rank queries, no q_lora
        rank, rope = config.mla_kv_rank, config.mla_rope_dim or 0
        queries, outputs = d * heads * (d_head + rope), heads * d_head * d
        return queries + d * (rank + rope) + rank + rank * heads * 2 * d_head + outputs
    params = d * (heads + 2 * kv) * d_head + heads * d_head * d
    params += (heads + 2 * kv) * d_head if config.qkv_bias else 0
    return params + (d if config.attn_out_bias else 0)


def embedding_params(config: DecoderConfig) -> int:
    """Token embedding plus learned positions."""
    learned = config.max_positions * config.d_model if config.positions == "learned" else 0
    return config.vocab_size * config.d_model + learned


def lm_head_params(config: DecoderConfig) -> int:
    """The unembedding matrix (0 when tied to the embedding)."""
    return 0 if config.tie_embeddings else config.vocab_size * config.d_model


def norm_params(config: DecoderConfig) -> int:
    """Two norms per layer plus the final norm (and BLOOM's embedding norm)."""
    norm = config.d_model * (2 if config.norm == "layernorm" else 1)
    return norm * (2 * config.n_layers + (2 if config.embed_norm else 1))


def count_params(config: DecoderConfig) -> int:
    """Parameters implied by the shape (see the module docstring)."""
    d = config.d_model
    total = embedding_params(config) + lm_head_params(config) + norm_params(config)
    moe = config.n_experts * (_mlp_params(config, config.d_mlp) + d)  # experts and router rows
    if config.d_shared_expert:
        moe += _mlp_params(config, config.d_shared_expert) + d  # shared expert and its gate
    for layer in range(config.n_layers):
        mlp = moe if config.is_moe_layer(layer) else _mlp_params(config, config.d_mlp)
        total += _attention_params(config) + mlp
    return total


def n_params(config: DecoderConfig) -> int:
    """The config's ``n_params`` when known, else :func:`count_params`."""
    return config.n_params if config.n_params is not None else count_params(config)


def weights_dtype(config: DecoderConfig, dtype: str | None = None) -> str:
    """Canonical storage type of the weights: ``dtype``, else the config's quant, else dtype."""
    return storage_type(dtype if dtype is not None else config.weights_quant or config.dtype)


def weights_bytes(
    config: DecoderConfig,
    dtype: str | None = None,
    *,
    tp: int = 1,
    keep_16bit: Collection[str] = FP8_KEEP_16BIT,
) -> int:
    """Bytes of the weights per device.

    Under ``fp8``, the parts named in ``keep_16bit`` (``"embeddings"``, ``"lm_head"``) and the
    norms are stored in the model's compute dtype; pass ``keep_16bit=()`` for a checkpoint that
    quantises them too. Other types store every parameter alike."""
    check_tp(config, tp)
    dtype = weights_dtype(config, dtype)
    total = n_params(config)
    if dtype != "fp8":
        return -(-storage_bytes(total, dtype) // tp)
    unknown = set(keep_16bit) - set(FP8_KEEP_16BIT)
    if unknown:
        raise PlanError(f"unknown part(s) to keep in 16 bits: {', '.join(sorted(unknown))}")
    kept = norm_params(config)
    kept += embedding_params(config) if "embeddings" in keep_16bit else 0
    kept += lm_head_params(config) if "lm_head" in keep_16bit else 0
    kept = min(kept, total)
    size = storage_bytes(kept, compute_dtype(config)) + storage_bytes(total - kept, "fp8")
    return -(-size // tp)
