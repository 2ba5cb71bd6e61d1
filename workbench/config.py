"""DecoderConfig: the one description of a decoder-only transformer the workbench understands.

Every loader (transformers folder, GGUF, the workbench's own format, an architecture profile)
produces a DecoderConfig; the hooked decoder, the analyzers and the KV-memory model read only
this. It is a frozen dataclass with Literal-typed choices and no ``-1`` sentinels: a feature
that is absent is ``None`` (or ``0`` experts), never a magic number.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from workbench.errors import ConfigError

PositionKind = Literal["learned", "sinusoidal", "rope", "alibi", "none"]
NormKind = Literal["layernorm", "rmsnorm"]
ActivationKind = Literal["gelu", "gelu_tanh", "silu", "relu"]
RopeScalingKind = Literal["linear", "dynamic", "yarn", "llama3", "longrope"]
RouterScoreKind = Literal["softmax", "sigmoid"]



# Per-layer tables (windows, MoE layers, the planner's per-layer sums) are built from the layer
# count; no decoder comes near a million layers, and 10^12 would exhaust memory building them.
MAX_LAYERS = 1_000_000


def _positive_number(name: str, value: object, allow_zero: bool = False) -> None:
    """``value`` is a finite real number > 0 (>= 0 with ``allow_zero``), else a ConfigError."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling, as published by the model (Llama 3, YaRN, linear, dynamic NTK).

    ``original_max_positions`` is the context the un-scaled model was trained at.
    """

    kind: RopeScalingKind
    factor: float
    original_max_positions: int | None = None
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    beta_fast: float | None = None  # yarn
    beta_slow: float | None = None  # yarn
    attention_factor: float | None = None  # yarn (mscale), longrope; None = the paper's default
    short_factor: tuple[float, ...] | None = None  # longrope: per-frequency divisors, short inputs
    long_factor: tuple[float, ...] | None = None  # longrope: used past original_max_positions

    def check(self) -> None:
        """Refuse a scaling that would run but mean nothing (factor 0, negative or NaN)."""
        if self.kind not in get_args(RopeScalingKind):
            raise ConfigError(f"RoPE scaling kind must be one of {get_args(RopeScalingKind)}, got {self.kind!r}")
        _positive_number("RoPE scaling factor", self.factor)
        original = self.original_max_positions
        if original is not None and (not isinstance(original, int) or isinstance(original, bool) or original <= 0):
            raise ConfigError(f"RoPE original_max_position_embeddings must be a positive integer, got {original!r}")
        for name in ("low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow", "attention_factor"):
            if getattr(self, name) is not None:
                _positive_number(f"RoPE scaling {name}", getattr(self, name))


@dataclass(frozen=True)
class DecoderConfig:
    """Shape and behaviour of a decoder-only transformer.

    Sizes follow the TransformerLens vocabulary: ``d_model`` (residual width), ``d_head``,
    ``n_heads`` query heads sharing ``n_kv_heads`` key/value heads (MHA when equal, MQA at 1),
    ``d_mlp`` (hidden width of the dense MLP or of each expert).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    max_positions: int
    n_kv_heads: int | None = None  # None means n_heads (MHA)
    positions: PositionKind = "rope"
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    norm: NormKind = "rmsnorm"
    norm_eps: float = 1e-5
    activation: ActivationKind = "silu"
    gated_mlp: bool = True  # SwiGLU-style gate * up
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    attn_scale: float | None = None  # None means 1/sqrt(d_head)
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] | None = None  # None: the window applies to every layer
    tie_embeddings: bool = False
    embed_norm: bool = False  # BLOOM's LayerNorm right after the token embedding
    # Mixture of experts. n_experts == 0 means every MLP is dense.
    n_experts: int = 0
    top_k: int = 0
    moe_layers: tuple[int, ...] | None = None  # None: all layers are MoE when n_experts > 0
    norm_topk_prob: bool = True  # renormalise the chosen experts' probabilities to sum to 1
    d_expert: int | None = None  # hidden width of each expert; None means d_mlp
    d_shared_expert: int = 0  # qwen2_moe: a dense expert every token uses, sigmoid-gated
    # Routing variants (DeepSeek V3): sigmoid scores, a per-expert bias that only selects,
    # top-k inside the best ``topk_groups`` of ``n_expert_groups`` groups, weights times a scale.
    router_score: RouterScoreKind = "softmax"
    router_bias: bool = False
    n_expert_groups: int = 1
    topk_groups: int = 1
    routed_scale: float = 1.0
    shared_expert_gate: bool = True  # qwen2_moe's sigmoid gate on the shared expert (DeepSeek: none)
    # Multi-head latent attention (DeepSeek V2/V3). d_head is then the no-RoPE part of each query
    # and key head (qk_nope_head_dim); queries and keys add mla_rope_dim RoPE dims, the RoPE key
    # is shared by all heads; values have d_head_v dims. The cache holds the latent + RoPE key.
    mla_kv_rank: int | None = None
    mla_rope_dim: int | None = None
    mla_q_rank: int | None = None  # low-rank queries (q_lora_rank); None: one full projection
    d_head_v: int | None = None  # value head size; None means d_head
    # Family mechanisms, each off by default (see workbench/loading/families/).
    qk_norm: bool = False  # Qwen3: RMSNorm over d_head on every query and key head, before RoPE
    attn_softcap: float | None = None  # Gemma 2: scores -> cap * tanh(scores / cap) pre-softmax
    final_softcap: float | None = None  # Gemma 2: the same on the output logits
    post_norms: bool = False  # Gemma 2: a norm on each sublayer's output before the residual add
    norm_offset: float = 0.0  # Gemma: RMSNorm multiplies by (norm_offset + weight)
    norm_bias: bool = True  # LayerNorm with a bias (MPT's have none)
    embed_scale: bool = False  # Gemma: token embeddings times sqrt(d_model)
    local_rope_theta: float | None = None  # Gemma 3: sliding-window layers use this base, unscaled
    rotary_dims: int | None = None  # partial RoPE (Phi-4-mini): rotate the first dims only; None: all
    alibi_bias_max: float | None = None  # MPT's ALiBi slope rule with this bias; None: BLOOM's rule
    clip_qkv: float | None = None  # MPT: q, k and v clamped to [-clip_qkv, clip_qkv]
    # Provenance, used by reports and the KV model.
    model_type: str = "workbench"
    dtype: str = "float32"  # the checkpoint's storage dtype
    weights_quant: str | None = None  # e.g. "Q4_1" for GGUF, "int8", "int4"
    n_params: int | None = None  # when known without weights (architecture profiles)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    name: str = "model"

    def __post_init__(self) -> None:
        for field_name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_mlp"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{field_name} must be a positive integer, got {value!r}")
        if self.n_layers > MAX_LAYERS:
            raise ConfigError(f"n_layers {self.n_layers:,} is beyond any decoder (at most {MAX_LAYERS:,})")
        if not isinstance(self.max_positions, int) or self.max_positions <= 0:
            raise ConfigError(f"max_positions must be a positive integer, got {self.max_positions!r}")
        self._check_values()
        kv = self.kv_heads
        if self.n_heads % kv:
            raise ConfigError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv})")
        for name, kind in (
            ("positions", PositionKind),
            ("norm", NormKind),
            ("activation", ActivationKind),
        ):
            if getattr(self, name) not in get_args(kind):
                raise ConfigError(f"{name} must be one of {get_args(kind)}, got {getattr(self, name)!r}")
        if self.n_experts and not 0 < self.top_k <= self.n_experts:
            raise ConfigError(f"top_k ({self.top_k}) must be in 1..n_experts ({self.n_experts})")
        if self.positions == "rope" and self.rope_dim % 2:
            raise ConfigError(f"RoPE needs an even number of rotated dims, got {self.rope_dim}")
        self._check_mechanisms()

    def _check_mechanisms(self) -> None:
        for name in ("attn_softcap", "final_softcap", "clip_qkv", "alibi_bias_max", "local_rope_theta"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ConfigError(f"{name} must be a positive number or None, got {value!r}")
        if self.router_score not in get_args(RouterScoreKind):
            raise ConfigError(f"router_score must be one of {get_args(RouterScoreKind)}, got {self.router_score!r}")
        if self.n_experts:
            groups, chosen = self.n_expert_groups, self.topk_groups
            if groups < 1 or self.n_experts % groups or not 1 <= chosen <= groups:
                raise ConfigError(
                    f"n_expert_groups ({groups}) must divide n_experts ({self.n_experts}) and "
                    f"topk_groups ({chosen}) be in 1..n_expert_groups"
                )
            if self.top_k > chosen * (self.n_experts // groups):
                raise ConfigError(f"top_k ({self.top_k}) exceeds the experts in {chosen} of {groups} groups")
            if groups > 1 and self.n_experts // groups < 2:
                raise ConfigError("grouped routing needs at least 2 experts per group")
        if self.mla_kv_rank is not None:
            for name in ("mla_kv_rank", "mla_rope_dim"):
                value = getattr(self, name)
                if not isinstance(value, int) or value <= 0:
                    raise ConfigError(f"MLA needs a positive integer {name}, got {value!r}")
        if self.rotary_dims is not None and not (
            isinstance(self.rotary_dims, int) and 0 < self.rotary_dims <= self.d_head
        ):
            raise ConfigError(f"rotary_dims must be in 1..d_head ({self.d_head}), got {self.rotary_dims!r}")
        for name in ("mla_q_rank", "d_head_v"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        scaling = self.rope_scaling
        if scaling is not None and scaling.kind == "longrope":
            for name in ("short_factor", "long_factor"):
                factors = getattr(scaling, name)
                if factors is None or len(factors) != self.rope_dim // 2:
                    raise ConfigError(f"longrope {name} needs {self.rope_dim // 2} values (rotated dims / 2)")
            if not scaling.original_max_positions:
                raise ConfigError("longrope needs original_max_positions")

    @property
    def rope_dim(self) -> int:
        """Rotated dims per head: d_head, the first ``rotary_dims``, or MLA's separate RoPE part."""
        if self.mla_kv_rank is not None and self.mla_rope_dim:
            return self.mla_rope_dim
        return self.rotary_dims or self.d_head

    @property
    def value_dim(self) -> int:
        """Size of each value head (d_head except under MLA with its own v_head_dim)."""
        return self.d_head_v or self.d_head

    @property
    def qk_dim(self) -> int:
        """Size of each query and key head: d_head, plus MLA's RoPE part."""
        return self.d_head + (self.mla_rope_dim or 0) if self.mla_kv_rank is not None else self.d_head

    def _check_values(self) -> None:
        """Numbers that would run but compute garbage (a zero RoPE base, a NaN eps) are refused
        here as bad input, before they surface as a misleading non-finite failure."""
        _positive_number("rope_theta", self.rope_theta)
        _positive_number("norm_eps", self.norm_eps, allow_zero=True)
        if self.attn_scale is not None:
            _positive_number("attn_scale", self.attn_scale)
        for name in ("gated_mlp", "qkv_bias", "attn_out_bias", "mlp_bias", "tie_embeddings", "embed_norm",
                     "norm_topk_prob"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("n_experts", "top_k", "d_shared_expert"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("n_kv_heads", "d_expert", "sliding_window", "mla_kv_rank", "mla_rope_dim", "n_params"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer or absent, got {value!r}")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 0 <= value < self.vocab_size):
                raise ConfigError(f"{name} {value!r} is not a token id of the vocabulary (0..{self.vocab_size - 1})")
        for name in ("moe_layers", "sliding_layers"):
            layers = getattr(self, name)
            if layers is not None and not all(isinstance(i, int) and 0 <= i < self.n_layers for i in layers):
                raise ConfigError(f"{name} must list layers in 0..{self.n_layers - 1}, got {layers!r}")
        if self.rope_scaling is not None:
            self.rope_scaling.check()

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (== n_heads for MHA)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def attention_kind(self) -> str:
        """"MHA", "GQA", "MQA" or "MLA"."""
        if self.mla_kv_rank is not None:
            return "MLA"
        if self.kv_heads == self.n_heads:
            return "MHA"
        return "MQA" if self.kv_heads == 1 else "GQA"

    @property
    def scale(self) -> float:
        """Multiplier applied to q.k before the softmax."""
        return self.qk_dim**-0.5 if self.attn_scale is None else self.attn_scale

    def window_for_layer(self, layer: int) -> int | None:
        """The sliding window of ``layer`` (None: full causal attention)."""
        if self.sliding_window is None:
            return None
        if self.sliding_layers is None or layer in self.sliding_layers:
            return self.sliding_window
        return None

    def is_moe_layer(self, layer: int) -> bool:
        if self.n_experts == 0:
            return False
        return self.moe_layers is None or layer in self.moe_layers

    @property
    def trained_context(self) -> int:
        """The context the model was trained at, before any RoPE scaling stretched it."""
        scaling = self.rope_scaling
        if scaling is not None and scaling.original_max_positions:
            return scaling.original_max_positions
        return self.max_positions

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown DecoderConfig fields: {', '.join(unknown)}")
        data = dict(data)
        try:
            if isinstance(data.get("rope_scaling"), dict):
                scaling = dict(data["rope_scaling"])
                for key in ("short_factor", "long_factor"):
                    if isinstance(scaling.get(key), list):
                        scaling[key] = tuple(scaling[key])
                data["rope_scaling"] = RopeScaling(**scaling)
            elif data.get("rope_scaling") is not None:
                raise ConfigError(f"rope_scaling must be an object or null, got {data['rope_scaling']!r}")
            for key in ("moe_layers", "sliding_layers"):
                if isinstance(data.get(key), list):
                    data[key] = tuple(data[key])
            return cls(**data)
        except TypeError as error:  # a missing required field, an unknown rope_scaling key
            raise ConfigError(str(error)) from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> DecoderConfig:
        return dataclasses.replace(self, **changes)
