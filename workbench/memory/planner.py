"""KV-cache memory planning: how many requests of how many tokens fit, as an engine would serve.

Pure arithmetic over a :class:`~workbench.config.DecoderConfig`, a device and an engine table
(:mod:`workbench.memory.engines`): no weights, no I/O. ``plan`` answers one deployment shape
with a :class:`KVPlan` (what ``workbench kv`` prints and writes as JSON, what ``diagnose``'s kv
section and the report's KV chart show); :mod:`workbench.analyzers.kv_memory` judges it.

Memory model, per device, in bytes::

    budget    = utilization x device memory (the memory CUDA reports when the catalog has it)
    kv budget = budget - weights - activation peak - memory outside torch
    fits      = batch x (KV one request reserves) <= kv budget, in whole blocks

- weights: :func:`workbench.memory.params.weights_bytes` (+ the rotary table where the engine
  keeps one), divided over ``tp`` devices.
- KV per token and layer: K and V for ``kv_heads`` heads, ``2 x kv_heads x d_head`` values (MHA,
  GQA, MQA alike), or for MLA one latent of ``mla_kv_rank + mla_rope_dim`` values. Under tensor
  parallelism each device holds ``ceil(kv_heads / tp)`` heads (a head is replicated when
  ``kv_heads < tp``); the MLA latent is replicated on every device.
- KV per request: a full-attention layer reserves the context, a sliding-window layer what the
  engine's window rule says (``window``: the window; vLLM: ``window - 1 +
  max_num_batched_tokens`` and one extra block), in whole blocks of ``block_size`` tokens.
- activation peak and memory outside torch: the engine's models (see engines.py).

``max_context`` is capped at the model's ``max_positions`` (the reason is in
``max_context_reason``); a context past it is refused unless ``allow_long_context``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from workbench.config import DecoderConfig
from workbench.errors import PlanError
from workbench.memory.dtypes import compute_dtype, storage_bytes, storage_type
from workbench.memory.engines import (
    Engine,
    activation_bytes,
    check_engine_rules,
    get_engine,
    rope_cache_bytes,
)
from workbench.memory.params import check_tp, n_params, weights_bytes
from workbench.memory.params import weights_dtype as resolve_weights_dtype

_SEARCH_LIMIT = 2**40  # beyond this many tokens or sequences, memory does not bind


class DeviceLike(Protocol):
    """What the planner needs from a device (``workbench.settings.Device`` satisfies it)."""

    name: str
    memory_bytes: int


def window_layer_count(config: DecoderConfig) -> int:
    """How many layers keep at most ``sliding_window`` tokens (all, unless ``sliding_layers``)."""
    if config.sliding_window is None:
        return 0
    layers = config.sliding_layers
    if layers is None:
        return config.n_layers
    return len({layer for layer in layers if 0 <= layer < config.n_layers})


def kv_dtype_for(config: DecoderConfig, kv_dtype: str | None) -> str:
    """Canonical KV dtype; ``None`` or ``"auto"`` mean the model's compute dtype."""
    if kv_dtype is not None and kv_dtype.strip().lower() == "auto":
        return compute_dtype(config)
    return storage_type(kv_dtype if kv_dtype is not None else compute_dtype(config), kv=True)


def kv_bytes_per_token_per_layer(config: DecoderConfig, kv_dtype: str | None = None, *, tp: int = 1) -> int:
    """KV bytes one token adds to one layer's cache on one device."""
    check_tp(config, tp)
    kv_dtype = kv_dtype_for(config, kv_dtype)
    if config.mla_kv_rank is not None:  # one latent + one shared RoPE key, replicated under tp
        elements = config.mla_kv_rank + (config.mla_rope_dim or 0)
    else:
        elements = 2 * -(-config.kv_heads // tp) * config.d_head  # K and V
    return storage_bytes(elements, kv_dtype)


def kv_bytes_per_token(config: DecoderConfig, kv_dtype: str | None = None, *, tp: int = 1) -> int:
    """KV bytes per token over all layers (before any sliding window caps it), per device."""
    return config.n_layers * kv_bytes_per_token_per_layer(config, kv_dtype, tp=tp)


def _cdiv(value: int, divisor: int) -> int:
    return -(-value // divisor)


def request_kv_bytes(
    config: DecoderConfig,
    context: int,
    *,
    kv_dtype: str | None = None,
    tp: int = 1,
    block_size: int = 1,
    window_rule: str = "window",
    batched_tokens: int = 1,
) -> int:
    """KV bytes one request of ``context`` tokens reserves on one device (see the module doc)."""
    if context < 0 or block_size < 1:
        raise PlanError(f"negative context or block: {context=}, {block_size=}")
    page = kv_bytes_per_token_per_layer(config, kv_dtype, tp=tp) * block_size
    windowed = window_layer_count(config)
    blocks = (config.n_layers - windowed) * _cdiv(context, block_size)
    if windowed:
        window = config.sliding_window or context
        if window_rule == "window":
            blocks += windowed * _cdiv(min(context, window), block_size)
        else:  # vLLM: the window's tail plus one scheduled batch, and a block of slack
            kept = min(window - 1 + batched_tokens, context)
            blocks += windowed * (_cdiv(kept, block_size) + (1 if context else 0))
    return page * blocks


def kv_cache_bytes(
    config: DecoderConfig,
    context: int,
    *,
    batch: int = 1,
    kv_dtype: str | None = None,
    tp: int = 1,
    block_size: int = 1,
) -> int:
    """First-principles KV bytes for ``batch`` sequences of ``context`` tokens, per device:
    windows at their size, tokens rounded up to whole blocks."""
    if batch < 0:
        raise PlanError(f"negative batch: {batch=}")
    return batch * request_kv_bytes(config, context, kv_dtype=kv_dtype, tp=tp, block_size=block_size)


@dataclass(frozen=True)
class KVPlan:
    """Memory of one deployment shape on one device under one engine. Bytes are per device."""

    engine: str
    engine_title: str
    model: str
    device: str
    memory_basis: str  # "cuda" (what CUDA reports), "nominal", "host" (RAM) or "given"
    device_memory_bytes: int  # the memory the budget starts from
    utilization: float
    device_bytes: int  # the budget: utilization x device_memory_bytes
    batch: int
    context: int
    tp: int
    kv_dtype: str
    weights_dtype: str
    block_size: int
    max_num_batched_tokens: int
    max_num_seqs: int
    attention_kind: str
    n_params: int
    kv_bytes_per_token: int  # all layers, before sliding windows cap it
    kv_bytes_per_request: int  # what one request of `context` tokens reserves
    kv_bytes: int  # batch x kv_bytes_per_request
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    kv_budget_bytes: int  # what is left for the KV cache (negative: not even the weights fit)
    kv_blocks: int
    kv_capacity_tokens: int  # kv_blocks x block_size
    max_concurrency: float  # requests of `context` tokens the KV budget holds
    total_bytes: int
    fraction_used: float  # total / budget
    fits: bool
    max_context: int | None  # largest context at this batch; None: memory never binds
    max_context_reason: str  # "model limit", "memory" or "windows"
    max_batch: int  # largest batch at this context (0: not even one sequence)
    model_max_positions: int
    beyond_model_limit: bool  # the context is past max_positions (allowed explicitly)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Shape:
    """The choices a plan holds fixed while batch and context vary."""

    config: DecoderConfig
    engine: Engine
    kv_dtype: str
    tp: int
    block_size: int
    batched_tokens: int
    sampled_rows: int
    budget: int
    weights: int
    non_torch: int

    def request(self, context: int) -> int:
        return request_kv_bytes(
            self.config, context, kv_dtype=self.kv_dtype, tp=self.tp, block_size=self.block_size,
            window_rule=self.engine.window_rule, batched_tokens=self.batched_tokens,
        )  # fmt: skip

    def activation(self, batch: int, context: int) -> int:
        return activation_bytes(
            self.engine, self.config, tokens=self.batched_tokens, rows=self.sampled_rows,
            batch=batch, context=context, tp=self.tp,
        )  # fmt: skip

    def block_bytes(self) -> int:
        """One block across every layer."""
        return kv_bytes_per_token(self.config, self.kv_dtype, tp=self.tp) * self.block_size

    def kv_budget(self, batch: int, context: int) -> int:
        return self.budget - self.weights - self.activation(batch, context) - self.non_torch

    def fits(self, batch: int, context: int) -> bool:
        budget = self.kv_budget(batch, context)
        usable = max(0, budget) // self.block_bytes() * self.block_bytes()  # whole blocks
        return budget >= 0 and batch * self.request(context) <= usable


def _largest(fits, low: int, cap: int | None) -> int | None:
    """Largest n in [low, cap] with fits(n) (fits is monotone non-increasing); low - 1 if none;
    None when cap is None and nothing below the search limit fails."""
    if not fits(low):
        return low - 1
    if cap is not None and fits(cap):
        return cap
    high = low + 1
    while cap is None or high < cap:
        if not fits(high):
            break
        if high >= _SEARCH_LIMIT:
            return None
        low, high = high, high * 2
    high = high if cap is None else min(high, cap)
    while high - low > 1:  # invariant: fits at low, not at high
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _device_memory(device: DeviceLike | int) -> tuple[str, int, str]:
    """(name, bytes, basis): the memory CUDA reports when known, else the nominal size."""
    if isinstance(device, int):
        if device <= 0:
            raise PlanError(f"device memory must be positive, got {device}")
        return "custom", device, "given"
    cuda = getattr(device, "cuda_memory_bytes", None)
    if cuda:
        return device.name, int(cuda), "cuda"
    basis = "host" if device.name == "cpu" else "nominal"
    return device.name, int(device.memory_bytes), basis


def plan(
    config: DecoderConfig,
    device: DeviceLike | int,
    *,
    batch: int,
    context: int,
    engine: Engine | str = "vllm",
    kv_dtype: str | None = None,
    tp: int = 1,
    utilization: float | None = None,
    block_size: int | None = None,
    max_num_batched_tokens: int | None = None,
    weights_dtype: str | None = None,
    allow_long_context: bool = False,
) -> KVPlan:
    """Plan ``batch`` requests of ``context`` tokens on ``device`` (a catalog device, or its
    memory in bytes) under ``engine``, sharded over ``tp`` devices. Unset options take the
    engine's defaults. See the module docstring for the model."""
    engine = get_engine(engine) if isinstance(engine, str) else engine
    if batch < 1 or context < 1:
        raise PlanError(f"batch and context must be at least 1, got {batch=}, {context=}")
    if context > config.max_positions and not allow_long_context:
        raise PlanError(
            f"context {context:,} is past the model's limit of {config.max_positions:,} positions "
            "(the engine refuses to start); pass --allow-long-context to plan it anyway"
        )
    utilization = engine.gpu_memory_utilization if utilization is None else utilization
    if not 0.0 < utilization <= 1.0:
        raise PlanError(f"utilization must be in (0, 1], got {utilization}")
    block_size = engine.block_size if block_size is None else block_size
    if block_size < 1:
        raise PlanError(f"block_size must be at least 1, got {block_size}")
    check_tp(config, tp)
    kv_dtype = kv_dtype_for(config, kv_dtype)
    check_engine_rules(engine, config, kv_dtype, tp)
    name, memory, basis = _device_memory(device)
    batched, seqs = engine.scheduler(name, memory)
    if max_num_batched_tokens is not None:
        if max_num_batched_tokens < 1:
            raise PlanError(f"max_num_batched_tokens must be at least 1, got {max_num_batched_tokens}")
        batched = max_num_batched_tokens
    weights_type = resolve_weights_dtype(config, weights_dtype)
    weights = weights_bytes(config, weights_type, tp=tp) + rope_cache_bytes(engine, config)
    shape = _Shape(
        config=config, engine=engine, kv_dtype=kv_dtype, tp=tp, block_size=block_size,
        batched_tokens=batched, sampled_rows=min(seqs, batched), budget=int(memory * utilization),
        weights=weights, non_torch=engine.non_torch_bytes,
    )  # fmt: skip
    per_request = shape.request(context)
    activation = shape.activation(batch, context)
    kv_budget = shape.kv_budget(batch, context)
    blocks = max(0, kv_budget) // shape.block_bytes()
    concurrency = blocks * shape.block_bytes() / per_request
    total = weights + activation + shape.non_torch + batch * per_request
    cap = None if allow_long_context else config.max_positions
    max_context = _largest(lambda n: shape.fits(batch, n), 1, cap)
    if max_context is None:
        reason = "windows"
    elif cap is not None and max_context >= cap:
        reason = "model limit"
    else:
        reason = "memory"
    return KVPlan(
        engine=engine.name, engine_title=engine.title, model=config.name, device=name,
        memory_basis=basis, device_memory_bytes=memory, utilization=utilization,
        device_bytes=shape.budget, batch=batch, context=context, tp=tp, kv_dtype=kv_dtype,
        weights_dtype=weights_type, block_size=block_size, max_num_batched_tokens=batched,
        max_num_seqs=seqs, attention_kind=config.attention_kind, n_params=n_params(config),
        kv_bytes_per_token=kv_bytes_per_token(config, kv_dtype, tp=tp),
        kv_bytes_per_request=per_request, kv_bytes=batch * per_request, weights_bytes=weights,
        activation_bytes=activation, non_torch_bytes=shape.non_torch, kv_budget_bytes=kv_budget,
        kv_blocks=blocks, kv_capacity_tokens=blocks * block_size, max_concurrency=concurrency,
        total_bytes=total, fraction_used=total / shape.budget, fits=shape.fits(batch, context),
        max_context=max_context, max_context_reason=reason,
        max_batch=_largest(lambda b: shape.fits(b, context), 1, None) or 0,
        model_max_positions=config.max_positions,
        beyond_model_limit=context > config.max_positions,
    )  # fmt: skip
