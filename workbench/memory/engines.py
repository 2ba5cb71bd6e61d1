"""Serving-engine rules as data: ``profiles/engines/<name>.toml`` -> :class:`Engine`.

An engine table says how a server turns device memory into a KV cache: the block size, how
many tokens a sliding-window layer reserves per request, which KV dtypes exist, whether KV heads
must shard evenly over tensor parallelism, the memory-utilization default, the scheduler's
defaults (``max_num_batched_tokens``, ``max_num_seqs``, by device), the activation-peak model
with its calibration source, and the memory it uses outside torch. Another engine is another
table. The activation models are the only code here, one function per kind:

- ``profiled_batch`` (vLLM): a dummy batch of ``max_num_batched_tokens`` tokens through the
  model, then the sampler on one row per request (``min(max_num_seqs, tokens)`` rows). The peak
  is the larger of the forward's live tensors and the sampler's: hidden states of the batch, the
  sampled rows' logits in the model dtype and ``sampler_fp32_rows`` fp32 vocab-wide buffers per
  sampled row (fp32 logits, temperature copy, sort values and int64 indices, probabilities,
  scatter output; the count is calibrated, see vllm.toml). It does not grow with concurrency.
- ``one_token``: one token's live tensors and one row of fp32 logits (the steady state).
- ``whole_context``: every position of every sequence at once, with fp32 logits for all of them
  (what the workbench's own probe forward holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workbench.config import DecoderConfig
from workbench.errors import PlanError, ProfileError
from workbench.memory.dtypes import compute_dtype, storage_bytes, storage_type
from workbench.settings.toml import profiles_dir, read_toml

GIB = 2**30
WindowRule = Literal["window", "window_minus_one_plus_batched"]
ActivationKind = Literal["profiled_batch", "one_token", "whole_context"]


@dataclass(frozen=True)
class SchedulerTier:
    """Scheduler defaults for devices with at least ``min_memory_bytes`` (names excluded)."""

    min_memory_bytes: int
    max_num_batched_tokens: int
    max_num_seqs: int
    exclude_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Engine:
    """One engine table (see the module docstring and profiles/engines/*.toml)."""

    name: str
    title: str
    source: str
    block_size: int
    gpu_memory_utilization: float
    window_rule: WindowRule
    kv_dtypes: tuple[str, ...]
    shard_kv_heads: bool  # True: KV heads must split evenly over tp (or tp over them)
    rope_cache_in_weights: bool  # the rotary cos/sin table is counted with the weights
    max_num_batched_tokens: int
    max_num_seqs: int
    tiers: tuple[SchedulerTier, ...]
    activation: ActivationKind
    sampler_fp32_rows: float
    activation_source: str
    non_torch_bytes: int
    non_torch_source: str
    path: Path

    def scheduler(self, device_name: str, memory_bytes: int) -> tuple[int, int]:
        """(max_num_batched_tokens, max_num_seqs) this engine picks on this device."""
        for tier in sorted(self.tiers, key=lambda t: -t.min_memory_bytes):
            excluded = any(part in device_name.lower() for part in tier.exclude_names)
            if memory_bytes >= tier.min_memory_bytes and not excluded:
                return tier.max_num_batched_tokens, tier.max_num_seqs
        return self.max_num_batched_tokens, self.max_num_seqs


def engines_dir() -> Path:
    return profiles_dir() / "engines"


def list_engines() -> list[str]:
    """Names of the shipped engine tables."""
    return sorted(path.stem for path in engines_dir().glob("*.toml"))


def get_engine(name: str) -> Engine:
    """The engine table called ``name``; an empty or unknown name is a :class:`PlanError`."""
    if not name or not name.strip():
        raise PlanError(f"empty engine name (known: {', '.join(list_engines())})")
    path = engines_dir() / f"{name.strip().lower()}.toml"
    if not path.is_file():
        raise PlanError(f"unknown engine {name!r} (known: {', '.join(list_engines())})")
    try:
        return _engine(path, read_toml(path))
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, ProfileError | PlanError):
            raise
        raise PlanError(f"{path}: bad engine table ({error!r})") from None


_KEYS = {"name", "title", "source", "block_size", "gpu_memory_utilization", "window_rule", "kv_dtypes",
         "shard_kv_heads", "rope_cache_in_weights", "scheduler", "activation", "non_torch"}


def _engine(path: Path, data: dict[str, Any]) -> Engine:
    unknown, missing = sorted(set(data) - _KEYS), sorted(_KEYS - set(data))
    if unknown or missing:
        problem = f"unknown key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}"
        raise PlanError(f"{path}: {problem} in the engine table (keys: {', '.join(sorted(_KEYS))})")
    scheduler, activation, non_torch = data["scheduler"], data["activation"], data["non_torch"]
    tiers = tuple(
        SchedulerTier(
            min_memory_bytes=int(tier["min_memory_gib"] * GIB),
            max_num_batched_tokens=int(tier["max_num_batched_tokens"]),
            max_num_seqs=int(tier["max_num_seqs"]),
            exclude_names=tuple(tier.get("exclude_names", ())),
        )
        for tier in scheduler.get("tiers", ())
    )
    kv_dtypes = tuple(storage_type(name, kv=True) for name in data["kv_dtypes"])
    if data["window_rule"] not in ("window", "window_minus_one_plus_batched"):
        raise PlanError(f"{path}: window_rule must be window or window_minus_one_plus_batched")
    if activation["model"] not in ("profiled_batch", "one_token", "whole_context"):
        raise PlanError(f"{path}: activation model must be profiled_batch, one_token or whole_context")
    return Engine(
        name=str(data["name"]), title=str(data["title"]), source=str(data["source"]),
        block_size=int(data["block_size"]),
        gpu_memory_utilization=float(data["gpu_memory_utilization"]),
        window_rule=data["window_rule"], kv_dtypes=kv_dtypes,
        shard_kv_heads=bool(data["shard_kv_heads"]),
        rope_cache_in_weights=bool(data["rope_cache_in_weights"]),
        max_num_batched_tokens=int(scheduler["max_num_batched_tokens"]),
        max_num_seqs=int(scheduler["max_num_seqs"]), tiers=tiers,
        activation=activation["model"],
        sampler_fp32_rows=float(activation.get("sampler_fp32_rows", 0.0)),
        activation_source=str(activation["source"]),
        non_torch_bytes=int(non_torch["bytes"]), non_torch_source=str(non_torch["source"]),
        path=path,
    )  # fmt: skip


def check_engine_rules(engine: Engine, config: DecoderConfig, kv_dtype: str, tp: int) -> None:
    """Refuse what this engine cannot run: a KV dtype it lacks, KV heads it cannot shard."""
    if kv_dtype not in engine.kv_dtypes:
        raise PlanError(
            f"the {engine.name} engine has no {kv_dtype} KV cache (it has: "
            f"{', '.join(engine.kv_dtypes)}); try --kv-dtype fp8 or --engine ideal"
        )
    kv_heads = config.kv_heads
    if engine.shard_kv_heads and config.mla_kv_rank is None and tp > 1:
        even = tp % kv_heads == 0 if tp >= kv_heads else kv_heads % tp == 0
        if not even:
            raise PlanError(
                f"{engine.name} cannot shard {kv_heads} KV heads over --tp {tp}: the KV heads "
                "must divide evenly over the devices (or the devices over the heads)"
            )


def _live_per_token(config: DecoderConfig, tp: int) -> int:
    """Elements one token keeps live inside one layer at its widest point, per device."""
    d, d_head = config.d_model, config.d_head
    heads, kv = config.n_heads // tp, -(-config.kv_heads // tp)
    if config.mla_kv_rank is not None:  # q with RoPE dims, the latent, expanded K and V, output
        rope = config.mla_rope_dim or 0
        attention = heads * (d_head + rope) + config.mla_kv_rank + rope + 3 * heads * d_head + d
    else:  # q, k, v, the attention output and o_proj's output
        attention = (2 * heads + 2 * kv) * d_head + d
    width = -(-config.d_mlp // tp)
    if config.n_experts:  # each token's rows through its top_k experts, plus the shared expert
        width = max(width, config.top_k * width + -(-config.d_shared_expert // tp))
    mlp = (3 if config.gated_mlp else 2) * width + d  # gate, up, their product; down's output
    return 2 * d + max(attention, mlp)  # plus the residual and its normed copy


def activation_bytes(
    engine: Engine,
    config: DecoderConfig,
    *,
    tokens: int,
    rows: int,
    batch: int = 1,
    context: int = 1,
    tp: int = 1,
) -> int:
    """Peak activation bytes per device under ``engine``'s model (see the module docstring).

    ``tokens``/``rows``: the profiled batch and its sampled rows (``profiled_batch`` only);
    ``batch``/``context``: the sequences (``whole_context`` only)."""
    element = storage_bytes(1, compute_dtype(config))
    live = _live_per_token(config, tp) * element
    vocab = config.vocab_size
    if engine.activation == "one_token":
        return live + vocab * 4
    if engine.activation == "whole_context":
        positions = batch * context
        return positions * live + positions * -(-vocab // tp) * 4
    forward = tokens * live
    sampler = tokens * config.d_model * element + rows * vocab * element
    sampler += int(engine.sampler_fp32_rows * rows * vocab * 4)
    return max(forward, sampler)


def rope_cache_bytes(engine: Engine, config: DecoderConfig) -> int:
    """The rotary cos/sin table an engine keeps beside the weights (0 if it does not)."""
    if not engine.rope_cache_in_weights or config.positions != "rope":
        return 0
    rotary = config.mla_rope_dim if config.mla_kv_rank is not None else config.d_head
    return config.max_positions * (rotary or 0) * storage_bytes(1, compute_dtype(config))

