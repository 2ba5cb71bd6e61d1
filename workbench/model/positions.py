"""Position information: RoPE (with its scaling variants), ALiBi slopes, sinusoidal tables.

Learned absolute positions are a plain ``nn.Embedding`` in the decoder and need nothing here.
RoPE uses the "rotate half" layout transformers uses for Llama-family weights (GGUF weights are
un-permuted into that layout by the loader).
"""

from __future__ import annotations

import math

import torch

from workbench.config import DecoderConfig, RopeScaling


def rope_inv_freq(config: DecoderConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``[d_head/2]`` (fp32) and the cos/sin multiplier for ``config``.

    ``seq_len`` matters only for dynamic NTK scaling, whose base grows with the sequence, and for
    LongRoPE, which switches to its long factors past the original context.
    """
    dim = config.rope_dim
    base = config.rope_theta
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    scaling = config.rope_scaling
    if scaling is None:
        return 1.0 / (base**exponents), 1.0
    if scaling.kind == "linear":
        return 1.0 / (base**exponents) / scaling.factor, 1.0
    if scaling.kind == "dynamic":
        reference = config.max_positions
        length = max(seq_len or reference, reference)
        grown = base * ((scaling.factor * length / reference) - (scaling.factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (grown**exponents), 1.0
    if scaling.kind == "llama3":
        return _llama3_inv_freq(1.0 / (base**exponents), scaling), 1.0
    if scaling.kind == "yarn":
        return _yarn_inv_freq(config, scaling)
    if scaling.kind == "longrope":
        return _longrope_inv_freq(1.0 / (base**exponents), config, scaling, seq_len)
    raise ValueError(f"unsupported RoPE scaling {scaling.kind!r}")


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by ``factor``, short ones kept, a smooth blend between."""
    old_context = scaling.original_max_positions or 8192
    low = scaling.low_freq_factor if scaling.low_freq_factor is not None else 1.0
    high = scaling.high_freq_factor if scaling.high_freq_factor is not None else 4.0
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > old_context / low, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelength - low) / (high - low)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelength < old_context / high) * ~(wavelength > old_context / low)
    return torch.where(medium, blended, scaled)


def _longrope_inv_freq(
    inv_freq: torch.Tensor, config: DecoderConfig, scaling: RopeScaling, seq_len: int | None
) -> tuple[torch.Tensor, float]:
    """LongRoPE (Phi-3): every frequency divided by its own searched factor, the short set up to
    the original context and the long set past it; cos/sin scaled by sqrt(1 + ln s / ln L)."""
    original = scaling.original_max_positions
    long = seq_len is not None and seq_len > original
    factors = torch.tensor(scaling.long_factor if long else scaling.short_factor, dtype=torch.float32)
    attention_factor = scaling.attention_factor
    if attention_factor is None:
        stretch = scaling.factor
        attention_factor = 1.0 if stretch <= 1 else math.sqrt(1 + math.log(stretch) / math.log(original))
    return inv_freq / factors, float(attention_factor)


def _yarn_inv_freq(config: DecoderConfig, scaling: RopeScaling) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023): interpolate low frequencies, keep high ones, ramp between."""
    dim, base, factor = config.rope_dim, config.rope_theta, scaling.factor
    original = scaling.original_max_positions or config.max_positions
    attention_factor = scaling.attention_factor
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0
    beta_fast = scaling.beta_fast or 32.0
    beta_slow = scaling.beta_slow or 1.0

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1 where the frequency is kept (extrapolated), 0 where interpolated
    position_freqs = base ** (torch.arange(0, dim, 2).to(torch.float32) / dim)
    extrapolated, interpolated = 1.0 / position_freqs, 1.0 / (factor * position_freqs)
    return interpolated * (1 - keep) + extrapolated * keep, float(attention_factor)


def rope_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, attention_factor: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[B, T, d_head]`` for integer ``positions [B, T]``, computed in fp32."""
    freqs = positions[..., None].float() * inv_freq.to(positions.device)  # (B, T, d_head/2)
    angles = torch.cat((freqs, freqs), dim=-1)
    return (angles.cos() * attention_factor).to(dtype), (angles.sin() * attention_factor).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, heads, T, d_head]`` by position; cos/sin are ``[B, T, R]``. With partial
    RoPE (R < d_head) only the first R dims turn; the rest pass through."""
    if cos.shape[-1] < x.shape[-1]:
        rotary = cos.shape[-1]
        return torch.cat([apply_rope(x[..., :rotary], cos, sin), x[..., rotary:]], dim=-1)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def alibi_slopes(n_heads: int, bias_max: float | None = None) -> torch.Tensor:
    """Per-head ALiBi slopes ``[n_heads]`` (Press et al. 2022).

    ``bias_max`` None follows BLOOM's rule for a head count that is not a power of 2; a number
    follows MPT's: slopes ``2^(-bias_max * i / P)`` for the next power of two P, odd ones first.
    The two rules give the same slopes at MPT's default ``bias_max`` of 8.
    """
    if bias_max is not None:
        padded = 2 ** math.ceil(math.log2(n_heads))
        exponents = torch.arange(1, padded + 1, dtype=torch.int64).float() * (bias_max / padded)
        slopes = 1.0 / torch.pow(2, exponents)
        if padded != n_heads:
            slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
        return slopes
    closest = 2 ** math.floor(math.log2(n_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + closest, dtype=torch.int32))
    if closest != n_heads:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))), dtype=torch.float32)
        extra = min(closest, n_heads - closest)
        powers = torch.arange(1, 1 + 2 * extra, 2, dtype=torch.int32)
        slopes = torch.cat([slopes, torch.pow(extra_base, powers)])
    return slopes


def sinusoidal_table(n_positions: int, d_model: int) -> torch.Tensor:
    """The fixed sin/cos table of Vaswani et al. 2017, ``[n_positions, d_model]``."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div[: d_model // 2])
    return table
