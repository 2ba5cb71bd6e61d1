"""Storage types: how many bytes a number of weights or cache values take.

A storage type is a name (``bf16``, ``fp8``, ``q4_k``) and a block layout: ``(bytes per block,
elements per block)``. Plain types have blocks of one element; GGUF block types carry their
scales inside the block (Q4_0 is 18 bytes per 32 weights = 4.5 bits; layouts from ggml-common.h).
int8/int4 count the weights alone (GPTQ/AWQ group scales add roughly 0.1-0.3 bits, not counted).
"""

from __future__ import annotations

import difflib

from workbench.config import DecoderConfig
from workbench.errors import PlanError

# Storage types as (bytes per block, elements per block). GGUF blocks: ggml-common.h layouts.
STORAGE_TYPES: dict[str, tuple[int, int]] = {
    "fp32": (4, 1), "fp16": (2, 1), "bf16": (2, 1), "fp8": (1, 1), "int8": (1, 1),
    "int4": (1, 2),
    "q4_0": (18, 32), "q4_1": (20, 32), "q5_0": (22, 32), "q5_1": (24, 32), "q8_0": (34, 32),
    "q2_k": (84, 256), "q3_k": (110, 256), "q4_k": (144, 256), "q5_k": (176, 256),
    "q6_k": (210, 256),
}  # fmt: skip
# Every type some engine can keep a KV cache in; each engine's table says which it supports
# (q8_0/q4_0 are llama.cpp's -ctk types).
KV_TYPES = ("fp32", "fp16", "bf16", "fp8", "int8", "int4", "q8_0", "q4_0")
FLOAT_TYPES = ("fp32", "fp16", "bf16")
_ALIASES = {
    "float32": "fp32", "float": "fp32", "f32": "fp32", "float16": "fp16", "half": "fp16",
    "f16": "fp16", "bfloat16": "bf16", "float8": "fp8", "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "e4m3": "fp8", "e5m2": "fp8",
    # llama.cpp's mixed files by their main type (_M/_S mix in a few wider tensors)
    "q3_k_s": "q3_k", "q3_k_m": "q3_k", "q3_k_l": "q3_k", "q4_k_s": "q4_k", "q4_k_m": "q4_k",
    "q5_k_s": "q5_k", "q5_k_m": "q5_k",
}  # fmt: skip


def storage_type(name: str, *, kv: bool = False) -> str:
    """Canonical storage-type name (``"bfloat16"`` -> ``"bf16"``, ``"Q4_K"`` -> ``"q4_k"``).

    An empty name is an error, never a silent fallback to a default."""
    kind = "KV-cache dtype" if kv else "weights dtype"
    if not name or not name.strip():
        raise PlanError(f"empty {kind}: give a name such as bf16 or fp8")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    allowed = KV_TYPES if kv else tuple(STORAGE_TYPES)
    if key not in allowed:
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PlanError(f"unknown {kind} {name!r}{hint} (known: {', '.join(allowed)})")
    return key


def storage_bytes(elements: int, dtype: str) -> int:
    """Bytes to store ``elements`` values as ``dtype``, rounded up to whole blocks."""
    block_bytes, block_elements = STORAGE_TYPES[storage_type(dtype)]
    return -(-elements // block_elements) * block_bytes


def compute_dtype(config: DecoderConfig) -> str:
    """The float dtype activations (and by default the KV cache) use.

    The model's own float dtype; FP8 checkpoints compute in it too. Integer and GGUF quantised
    weights compute in fp16 (llama.cpp's default cache type)."""
    try:
        dtype = storage_type(config.dtype)
    except PlanError:
        return "fp16"
    if dtype not in FLOAT_TYPES:
        return "fp16"
    quant = config.weights_quant
    if quant is None or _ALIASES.get(quant.strip().lower(), quant.strip().lower()) == "fp8":
        return dtype
    return "fp16"
