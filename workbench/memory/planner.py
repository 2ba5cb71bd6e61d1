"""KV-cache memory planning: does this model, at this batch and context, fit on this device?

Pure arithmetic over a :class:`~workbench.config.DecoderConfig` and a device's memory size: no
weights, no I/O. ``plan`` answers one deployment shape with a :class:`KVPlan` (what
``workbench kv`` prints and writes as JSON); ``analyze`` turns the plan into findings.

Memory model, per device, in bytes (all integers)::

    total = weights + kv_cache + activations + logits        fits when total <= usable
    usable = device memory x utilization                      (vLLM's gpu_memory_utilization)

- weights: n_params x the storage type's bytes per element (GGUF block types include their
  scales: Q4_0 is 18 bytes per 32 weights = 4.5 bits), divided over ``tp`` devices. n_params is
  the config's when given, else counted from the shape (:func:`count_params`). int8/int4 count
  the weights alone; GPTQ/AWQ group scales add roughly 0.1-0.3 bits that are not counted.
- kv_cache: per layer and token, K and V for ``kv_heads`` heads: ``2 x kv_heads x d_head`` values
  (MHA, GQA, MQA alike), or for MLA one latent of ``mla_kv_rank + mla_rope_dim`` values (no
  factor 2). A layer with a sliding window keeps ``min(context, window)`` tokens. Tokens are
  rounded up to whole paged blocks (``block_size``) per sequence. Under tensor parallelism each
  device holds ``ceil(kv_heads / tp)`` heads, so a head is replicated when ``kv_heads < tp``;
  the MLA latent is shared by all heads and replicated on every device.
- activations: prefill runs ``C = min(context, prefill_chunk)`` tokens per sequence at a time
  (``prefill_chunk=None``: the whole context at once); one layer's live tensors per token are
  the residual and its normed copy (replicated under tp), q, k, v and the attention output, and
  the MLP's gate, up and product (``d_mlp x top_k + d_shared_expert`` wide for MoE), at the
  compute dtype (the model's float dtype; 2 bytes for quantised weights).
- logits: ``batch x C x vocab x 4`` bytes (fp32, every position, as the workbench's probes
  compute them; servers that keep only the last position need less), vocab split over ``tp``.

Not modelled: attention score matrices (fused attention keeps none), the runtime's own context,
allocator fragmentation (what ``utilization`` and the risk thresholds absorb), training state.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from workbench.config import DecoderConfig
from workbench.errors import PlanError
from workbench.findings import Finding, Status

Risk = Literal["low", "medium", "high", "oom"]
ANALYZER = "kv_memory"
GIB = 2**30

# Threshold names and defaults; profiles/default.toml holds the same values with their sources.
DEFAULT_THRESHOLDS: dict[str, float] = {"medium_fraction": 0.70, "high_fraction": 0.90}

# Storage types as (bytes per block, elements per block). GGUF blocks: ggml-common.h layouts.
STORAGE_TYPES: dict[str, tuple[int, int]] = {
    "fp32": (4, 1), "fp16": (2, 1), "bf16": (2, 1), "fp8": (1, 1), "int8": (1, 1),
    "int4": (1, 2),
    "q4_0": (18, 32), "q4_1": (20, 32), "q5_0": (22, 32), "q5_1": (24, 32), "q8_0": (34, 32),
    "q2_k": (84, 256), "q3_k": (110, 256), "q4_k": (144, 256), "q5_k": (176, 256),
    "q6_k": (210, 256),
}  # fmt: skip
KV_TYPES = ("fp32", "fp16", "bf16", "fp8", "int8", "int4", "q8_0", "q4_0")  # q*: llama.cpp -ctk
_ALIASES = {
    "float32": "fp32", "float": "fp32", "f32": "fp32", "float16": "fp16", "half": "fp16",
    "f16": "fp16", "bfloat16": "bf16", "float8": "fp8", "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "e4m3": "fp8", "e5m2": "fp8",
}  # fmt: skip



class DeviceLike(Protocol):
    """What the planner needs from a device (``workbench.settings.Device`` satisfies it)."""

    name: str
    memory_bytes: int


def storage_type(name: str, *, kv: bool = False) -> str:
    """Canonical storage-type name (``"bfloat16"`` -> ``"bf16"``, ``"Q4_K"`` -> ``"q4_k"``)."""
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    allowed = KV_TYPES if kv else tuple(STORAGE_TYPES)
    if key not in allowed:
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        kind = "KV-cache dtype" if kv else "weights dtype"
        raise PlanError(f"unknown {kind} {name!r}{hint} (known: {', '.join(allowed)})")
    return key


def storage_bytes(elements: int, dtype: str) -> int:
    """Bytes to store ``elements`` values as ``dtype``, rounded up to whole blocks."""
    block_bytes, block_elements = STORAGE_TYPES[storage_type(dtype)]
    return -(-elements // block_elements) * block_bytes


def compute_dtype(config: DecoderConfig) -> str:
    """The float dtype activations (and by default the KV cache) use: the model's own, or fp16
    under quantised weights (llama.cpp's default cache type)."""
    try:
        dtype = storage_type(config.dtype)
    except PlanError:
        return "fp16"
    return dtype if dtype in ("fp32", "fp16", "bf16") and not config.weights_quant else "fp16"


def window_layer_count(config: DecoderConfig) -> int:
    """How many layers keep at most ``sliding_window`` tokens.

    All layers when ``sliding_window`` is set, unless the config carries a per-layer
    ``sliding_layers`` tuple (Gemma 2's alternation; read when DecoderConfig has it).
    """
    if config.sliding_window is None:
        return 0
    layers = getattr(config, "sliding_layers", None)
    if layers is None:
        return config.n_layers
    return len({layer for layer in layers if 0 <= layer < config.n_layers})


def _check_tp(config: DecoderConfig, tp: int) -> None:
    if tp < 1 or config.n_heads % tp:
        raise PlanError(f"tp must be >= 1 and divide n_heads ({config.n_heads}), got {tp}")


def kv_bytes_per_token_per_layer(config: DecoderConfig, kv_dtype: str | None = None, *, tp: int = 1) -> int:
    """KV bytes one token adds to one layer's cache on one device."""
    _check_tp(config, tp)
    kv_dtype = storage_type(kv_dtype or compute_dtype(config), kv=True)
    if config.mla_kv_rank is not None:  # one latent + one shared RoPE key, replicated under tp
        elements = config.mla_kv_rank + (config.mla_rope_dim or 0)
    else:
        elements = 2 * -(-config.kv_heads // tp) * config.d_head  # K and V
    return storage_bytes(elements, kv_dtype)


def kv_bytes_per_token(config: DecoderConfig, kv_dtype: str | None = None, *, tp: int = 1) -> int:
    """KV bytes per token over all layers (before any sliding window caps it), per device."""
    return config.n_layers * kv_bytes_per_token_per_layer(config, kv_dtype, tp=tp)


def kv_cache_bytes(
    config: DecoderConfig,
    context: int,
    *,
    batch: int = 1,
    kv_dtype: str | None = None,
    tp: int = 1,
    block_size: int = 1,
) -> int:
    """KV-cache bytes for ``batch`` sequences of ``context`` tokens, per device."""
    if context < 0 or batch < 0 or block_size < 1:
        raise PlanError(f"negative size or block: {context=}, {batch=}, {block_size=}")
    per_layer = kv_bytes_per_token_per_layer(config, kv_dtype, tp=tp)
    n_windowed = window_layer_count(config)
    kept_full = _round_up(context, block_size)
    kept_window = _round_up(min(context, config.sliding_window or context), block_size)
    tokens = (config.n_layers - n_windowed) * kept_full + n_windowed * kept_window
    return batch * per_layer * tokens


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


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


def count_params(config: DecoderConfig) -> int:
    """Parameters implied by the shape: embeddings (tied or not, learned positions), attention
    (GQA-aware, biases, approximate for MLA), dense or gated MLPs, experts with their router and
    shared expert, and two norms per layer plus the final norm (LayerNorm counts its bias)."""
    d = config.d_model
    norm = d * (2 if config.norm == "layernorm" else 1)
    total = config.vocab_size * d * (1 if config.tie_embeddings else 2)
    total += config.max_positions * d if config.positions == "learned" else 0
    total += norm * (2 if config.embed_norm else 1)
    moe = config.n_experts * (_mlp_params(config, config.d_mlp) + d)  # experts and router rows
    if config.d_shared_expert:
        moe += _mlp_params(config, config.d_shared_expert) + d  # shared expert and its gate
    for layer in range(config.n_layers):
        mlp = moe if config.is_moe_layer(layer) else _mlp_params(config, config.d_mlp)
        total += _attention_params(config) + mlp + 2 * norm
    return total


def n_params(config: DecoderConfig) -> int:
    """The config's ``n_params`` when known, else :func:`count_params`."""
    return config.n_params if config.n_params is not None else count_params(config)


def weights_bytes(config: DecoderConfig, dtype: str | None = None, *, tp: int = 1) -> int:
    """Bytes of the weights per device; ``dtype`` defaults to the config's quant or dtype."""
    _check_tp(config, tp)
    dtype = dtype or config.weights_quant or config.dtype
    return -(-storage_bytes(n_params(config), dtype) // tp)


def _prefill_tokens(context: int, prefill_chunk: int | None) -> int:
    return context if prefill_chunk is None else min(context, prefill_chunk)


def activation_bytes(
    config: DecoderConfig, *, batch: int, context: int, prefill_chunk: int | None, tp: int = 1
) -> int:
    """Peak per-layer prefill workspace per device (see the module docstring); logits excluded."""
    _check_tp(config, tp)
    heads, kv = config.n_heads // tp, -(-config.kv_heads // tp)
    width = config.d_mlp
    if config.n_experts:
        width = max(width, config.d_mlp * config.top_k + config.d_shared_expert)
    per_token = 2 * config.d_model + (2 * heads + 2 * kv) * config.d_head
    per_token += (3 if config.gated_mlp else 2) * -(-width // tp)
    element_bytes = storage_bytes(1, compute_dtype(config))
    return batch * _prefill_tokens(context, prefill_chunk) * per_token * element_bytes


def logits_bytes(
    config: DecoderConfig, *, batch: int, context: int, prefill_chunk: int | None, tp: int = 1
) -> int:
    """fp32 logits of every prefilled position per device (vocab-parallel head under tp)."""
    return batch * _prefill_tokens(context, prefill_chunk) * -(-config.vocab_size // tp) * 4


def risk_level(fraction: float, thresholds: Mapping[str, float] | None = None) -> Risk:
    """low below ``medium_fraction`` of usable memory, medium below ``high_fraction``, high up
    to 100%, oom beyond."""
    limits = resolve_thresholds(thresholds)
    if fraction > 1.0:
        return "oom"
    if fraction >= limits["high_fraction"]:
        return "high"
    return "medium" if fraction >= limits["medium_fraction"] else "low"


def resolve_thresholds(thresholds: Mapping[str, Any] | None) -> dict[str, float]:
    """Defaults overridden by ``thresholds``; an unknown name is an error naming it."""
    unknown = sorted(set(thresholds or {}) - set(DEFAULT_THRESHOLDS))
    if unknown:
        known = ", ".join(DEFAULT_THRESHOLDS)
        raise PlanError(f"unknown kv_memory thresholds: {', '.join(unknown)} (known: {known})")
    return {**DEFAULT_THRESHOLDS, **{k: float(v) for k, v in (thresholds or {}).items()}}


@dataclass(frozen=True)
class KVPlan:
    """Memory of one deployment shape on one device. Byte counts are per device."""

    model: str
    device: str
    batch: int
    context: int
    tp: int
    kv_dtype: str
    weights_dtype: str
    utilization: float
    block_size: int
    prefill_chunk: int | None
    attention_kind: str
    n_params: int
    kv_bytes_per_token: int  # all layers, before sliding windows cap it
    kv_bytes: int
    weights_bytes: int
    activation_bytes: int
    logits_bytes: int
    total_bytes: int
    device_memory_bytes: int  # as the catalog states it
    device_bytes: int  # usable: device memory x utilization
    fraction_used: float  # total / usable
    fits: bool
    risk: Risk
    max_context: int | None  # largest context that fits at this batch; None: memory never binds
    max_batch: int  # largest batch that fits at this context (0: not even one sequence)
    model_max_positions: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Shape:
    """The deployment choices a plan holds fixed while batch and context vary."""

    kv_dtype: str
    weights_dtype: str
    tp: int
    block_size: int
    prefill_chunk: int | None

    def parts(self, config: DecoderConfig, batch: int, context: int) -> tuple[int, int, int, int]:
        """(weights, kv, activations, logits) bytes per device."""
        kv = kv_cache_bytes(
            config, context, batch=batch, kv_dtype=self.kv_dtype, tp=self.tp,
            block_size=self.block_size,
        )  # fmt: skip
        sizes = {"batch": batch, "context": context, "prefill_chunk": self.prefill_chunk}
        return (
            weights_bytes(config, self.weights_dtype, tp=self.tp),
            kv,
            activation_bytes(config, **sizes, tp=self.tp),
            logits_bytes(config, **sizes, tp=self.tp),
        )

    def total(self, config: DecoderConfig, batch: int, context: int) -> int:
        return sum(self.parts(config, batch, context))


_CONTEXT_SEARCH_LIMIT = 2**40  # beyond this, memory does not bound the context


def _max_context(config: DecoderConfig, shape: _Shape, batch: int, usable: int) -> int | None:
    """Largest context with total <= usable at ``batch`` (total is non-decreasing in context)."""
    if shape.total(config, batch, 1) > usable:
        return 0
    low, high = 1, 2
    while shape.total(config, batch, high) <= usable:
        if high >= _CONTEXT_SEARCH_LIMIT:
            return None
        low, high = high, high * 2
    while high - low > 1:  # invariant: fits at low, not at high
        middle = (low + high) // 2
        fits = shape.total(config, batch, middle) <= usable
        low, high = (middle, high) if fits else (low, middle)
    return low


def _max_batch(config: DecoderConfig, shape: _Shape, context: int, usable: int) -> int:
    """Largest batch with total <= usable: everything but the weights is linear in batch."""
    weights = shape.parts(config, 0, context)[0]
    per_sequence = shape.total(config, 1, context) - weights
    return max(0, (usable - weights) // per_sequence)


def plan(
    config: DecoderConfig,
    device: DeviceLike | int,
    *,
    batch: int,
    context: int,
    kv_dtype: str | None = None,
    tp: int = 1,
    utilization: float = 0.9,
    block_size: int = 16,
    prefill_chunk: int | None = 2048,
    weights_dtype: str | None = None,
    thresholds: Mapping[str, Any] | None = None,
) -> KVPlan:
    """Plan ``batch`` sequences of ``context`` tokens on ``device`` (a catalog device, or its
    memory in bytes), sharded over ``tp`` devices. See the module docstring for the model."""
    if batch < 1 or context < 1:
        raise PlanError(f"batch and context must be at least 1, got {batch=}, {context=}")
    if not 0.0 < utilization <= 1.0:
        raise PlanError(f"utilization must be in (0, 1], got {utilization}")
    if prefill_chunk is not None and prefill_chunk < 1:
        raise PlanError(f"prefill_chunk must be at least 1 (or None), got {prefill_chunk}")
    _check_tp(config, tp)
    shape = _Shape(
        kv_dtype=storage_type(kv_dtype or compute_dtype(config), kv=True),
        weights_dtype=storage_type(weights_dtype or config.weights_quant or config.dtype),
        tp=tp,
        block_size=block_size,
        prefill_chunk=prefill_chunk,
    )
    if isinstance(device, int):
        device_name, memory = "custom", device
    else:
        device_name, memory = device.name, int(device.memory_bytes)
    usable = int(memory * utilization)
    weights, kv, activations, logits = shape.parts(config, batch, context)
    total = weights + kv + activations + logits
    fraction = total / usable if usable else float("inf")
    return KVPlan(
        model=config.name, device=device_name, batch=batch, context=context, tp=tp,
        kv_dtype=shape.kv_dtype, weights_dtype=shape.weights_dtype, utilization=utilization,
        block_size=block_size, prefill_chunk=prefill_chunk,
        attention_kind=config.attention_kind, n_params=n_params(config),
        kv_bytes_per_token=kv_bytes_per_token(config, shape.kv_dtype, tp=tp), kv_bytes=kv,
        weights_bytes=weights, activation_bytes=activations, logits_bytes=logits,
        total_bytes=total, device_memory_bytes=memory, device_bytes=usable,
        fraction_used=fraction, fits=total <= usable, risk=risk_level(fraction, thresholds),
        max_context=_max_context(config, shape, batch, usable),
        max_batch=_max_batch(config, shape, context, usable),
        model_max_positions=config.max_positions,
    )  # fmt: skip


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:,.1f} GiB"


def _fixes(config: DecoderConfig, device: DeviceLike | int, result: KVPlan, options: dict) -> str:
    """Concrete alternatives, each computed by re-planning with one option changed."""
    fixes: list[str] = []
    if result.weights_bytes > result.device_bytes:
        need = f"{_gib(result.weights_bytes)} of {_gib(result.device_bytes)} usable"
        fixes.append(f"the weights alone need {need}")
        for dtype, label in (("fp8", "8-bit (fp8/int8)"), ("int4", "int4")):
            if storage_bytes(256, dtype) < storage_bytes(256, result.weights_dtype):
                size = weights_bytes(config, dtype, tp=result.tp)
                fixes.append(f"{label} weights take {_gib(size)} per device")
    else:
        if result.max_context:
            largest = f"{result.max_context:,} tokens"
            fixes.append(f"at batch {result.batch} the largest context that fits is {largest}")
        if result.max_batch:
            largest = f"{result.max_batch:,}"
            fixes.append(f"at context {result.context:,} the largest batch that fits is {largest}")
        if storage_bytes(256, result.kv_dtype) > 256:
            fp8 = plan(config, device, **{**options, "kv_dtype": "fp8"})
            verdict = "fits" if fp8.fits else "still does not fit"
            fixes.append(f"an fp8 KV cache (--kv-dtype fp8) takes {_gib(fp8.kv_bytes)}: {verdict}")
        workspace = result.activation_bytes + result.logits_bytes
        if workspace > result.kv_bytes and (result.prefill_chunk or result.context) > 512:
            small = plan(config, device, **{**options, "prefill_chunk": 512})
            smaller = _gib(small.activation_bytes + small.logits_bytes)
            fixes.append(f"prefill in chunks of 512 tokens: workspace {smaller}")
    for tp in (2, 4, 8, 16):
        if tp > result.tp and config.n_heads % tp == 0:
            sharded = plan(config, device, **{**options, "tp": tp})
            if sharded.fits:
                per_device = _gib(sharded.total_bytes)
                fixes.append(f"tensor parallel over {tp} devices (--tp {tp}): {per_device} each")
                break
    return "; ".join(fixes) or "no single change fits: combine a smaller batch and context"


def analyze(
    config: DecoderConfig,
    device: DeviceLike | int,
    batch: int,
    context: int,
    *,
    kv_dtype: str | None = None,
    tp: int = 1,
    utilization: float = 0.9,
    block_size: int = 16,
    prefill_chunk: int | None = 2048,
    weights_dtype: str | None = None,
    thresholds: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """Findings for one deployment shape: ``fits`` (fail when it does not fit, warn at high
    risk), ``max_context`` (info when the model's full context does not fit at this batch),
    ``max_batch`` (info) and ``context_within_model`` (warn beyond max_positions)."""
    limits = resolve_thresholds(thresholds)
    options: dict[str, Any] = {
        "batch": batch, "context": context, "kv_dtype": kv_dtype, "tp": tp,
        "utilization": utilization, "block_size": block_size, "prefill_chunk": prefill_chunk,
        "weights_dtype": weights_dtype, "thresholds": limits,
    }  # fmt: skip
    result = plan(config, device, **options)
    status: Status = "fail" if not result.fits else "warn" if result.risk == "high" else "pass"
    verdict = {"fail": "does not fit", "warn": "fits with little headroom", "pass": "fits"}
    usage = (
        f"{_gib(result.total_bytes)} per device of {_gib(result.device_bytes)} usable "
        f"({utilization:.0%} of {_gib(result.device_memory_bytes)}, {result.device}): weights "
        f"{_gib(result.weights_bytes)}, KV cache {_gib(result.kv_bytes)} ({result.kv_dtype}, "
        f"{batch} x {context:,} tokens), workspace "
        f"{_gib(result.activation_bytes + result.logits_bytes)}"
    )
    max_context = result.max_context
    full = max_context is None or max_context >= config.max_positions
    reach = "any context fits" if max_context is None else f"up to {max_context:,} tokens fit"
    reach = "no context fits" if max_context == 0 else reach
    beyond = context > config.max_positions
    return [
        Finding(
            analyzer=ANALYZER, check="fits", status=status,
            message=f"{config.name} {verdict[status]} (risk {result.risk}): {usage}",
            metric="memory_fraction", value=result.fraction_used,
            threshold=1.0 if status == "fail" else limits["high_fraction"],
            fix=None if status == "pass" else _fixes(config, device, result, options),
            details=result.to_dict(),
        ),
        Finding(
            analyzer=ANALYZER, check="max_context", status="pass" if full else "info",
            message=f"at batch {batch}, {reach} (model max_positions {config.max_positions:,})",
            metric="max_context", value=None if max_context is None else float(max_context),
            threshold=float(config.max_positions),
        ),
        Finding(
            analyzer=ANALYZER, check="max_batch", status="info",
            message=f"at context {context:,}, up to {result.max_batch:,} sequences fit",
            metric="max_batch", value=float(result.max_batch), threshold=float(batch),
        ),
        Finding(
            analyzer=ANALYZER, check="context_within_model", status="warn" if beyond else "pass",
            message=f"context {context:,} {'exceeds' if beyond else 'is within'} the model's "
            f"max_positions {config.max_positions:,}",
            metric="context", value=float(context), threshold=float(config.max_positions),
            fix=f"positions past {config.max_positions:,} are untrained" if beyond else None,
        ),
    ]  # fmt: skip
