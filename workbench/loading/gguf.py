"""GGUF files (llama.cpp's format): metadata -> DecoderConfig, tensors -> dequantised weights.

Read with the ``gguf`` package; nothing here needs transformers. llama.cpp stores the query and
key projections of ``llama`` models with the rotary halves interleaved; they are permuted back
to the "rotate half" layout the decoder (and transformers) use. Qwen2 files need no permutation.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from workbench.config import ConfigError, DecoderConfig, RopeScaling
from workbench.errors import CheckpointError

# Architectures whose GGUF layout is the Llama one (the key map below).
LLAMA_LIKE = {"llama", "mistral", "qwen2"}
# Of those, the ones whose q/k rows llama.cpp's converter interleaves (its "normal" rotary
# layout). Qwen2 uses the NeoX layout, which is already "rotate half": its rows are stored as is.
INTERLEAVED_ROTARY = {"llama"}
# ggml types the loader dequantises (gguf.dequantize handles these; others are refused).
SUPPORTED_TYPES = {
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
}
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 12: "Q3_K_M", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
              18: "Q6_K", 32: "BF16"}


def _error(path: Path, message: str) -> Exception:
    return CheckpointError(f"{path}: {message}")


def _reader(path: Path):
    try:
        return gguf.GGUFReader(str(path))
    except Exception as error:  # the reader raises bare ValueError/IndexError on bad files
        raise _error(path, f"not a readable GGUF file ({type(error).__name__}: {error})") from None


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


def _config(reader, path: Path) -> DecoderConfig:
    arch = _field(reader, "general.architecture")
    if arch not in LLAMA_LIKE:
        raise _error(path, f"GGUF architecture {arch!r} is not supported (supported: {', '.join(sorted(LLAMA_LIKE))})")

    def need(key: str) -> Any:
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise _error(path, f"GGUF metadata lacks {arch}.{key}")
        return value

    def count(key: str, default: Any = ...) -> int:
        """A positive integer field (a head count of 0 or NaN is refused, not divided by)."""
        value = need(key) if default is ... else _field(reader, f"{arch}.{key}", default)
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value <= 0:
            raise _error(path, f"GGUF metadata {arch}.{key} must be a positive integer, got {value!r}")
        return int(value)

    def number(key: str, default: Any = ...) -> float:
        value = need(key) if default is ... else _field(reader, f"{arch}.{key}", default)
        if not isinstance(value, int | float | np.number) or isinstance(value, bool) or not math.isfinite(value):
            raise _error(path, f"GGUF metadata {arch}.{key} must be a finite number, got {value!r}")
        return float(value)

    n_heads = count("attention.head_count")
    d_model = count("embedding_length")
    vocab = _field(reader, f"{arch}.vocab_size")
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else None
    if vocab is None:
        raise _error(path, f"GGUF metadata lacks {arch}.vocab_size and tokenizer.ggml.tokens")
    vocab = count("vocab_size", vocab)
    names = {t.name for t in reader.tensors}
    file_type = _field(reader, "general.file_type")
    if "rope_freqs.weight" in names:
        raise _error(path, "per-dimension RoPE factors (rope_freqs.weight, Llama 3.1 scaling) are not supported")
    d_head = count("attention.key_length", d_model // n_heads or 1)
    rotary_dims = count("rope.dimension_count", d_head)
    if rotary_dims != d_head:
        raise _error(path, f"partial rotary embeddings ({rotary_dims} of {d_head} dims) are not supported")
    try:
        return DecoderConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_layers=count("block_count"),
            n_heads=n_heads,
            n_kv_heads=count("attention.head_count_kv", n_heads),
            d_head=d_head,
            d_mlp=count("feed_forward_length"),
            max_positions=count("context_length"),
            positions="rope",
            rope_theta=number("rope.freq_base", 10000.0),
            rope_scaling=_rope_scaling(reader, arch, path),
            norm="rmsnorm",
            norm_eps=number("attention.layer_norm_rms_epsilon"),
            activation="silu",
            gated_mlp=True,
            qkv_bias="blk.0.attn_q.bias" in names,
            tie_embeddings="output.weight" not in names,
            model_type=arch,
            dtype="float32",
            weights_quant=FILE_TYPES.get(int(file_type)) if file_type is not None else None,
            bos_token_id=_token_id(reader, "tokenizer.ggml.bos_token_id"),
            eos_token_id=_token_id(reader, "tokenizer.ggml.eos_token_id"),
            name=re.sub(r"[.-](Q\d\w*|F16|F32|BF16|IQ\w+)$", "", path.stem, flags=re.IGNORECASE) or path.stem,
        )
    except (ConfigError, TypeError, ValueError, OverflowError) as error:
        raise _error(path, f"GGUF metadata does not describe a decoder ({error})") from None


def _token_id(reader, key: str) -> Any:
    """A token id field as a plain int (left as read when it is not an integer: the config refuses it)."""
    value = _field(reader, key)
    return int(value) if isinstance(value, np.integer) else value


def _rope_scaling(reader, arch: str, path: Path) -> RopeScaling | None:
    kind = _field(reader, f"{arch}.rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind != "linear":  # yarn's llama.cpp parameters do not map one-to-one onto transformers'
        raise _error(path, f"GGUF RoPE scaling {kind!r} is not supported (none, linear)")
    factor = _field(reader, f"{arch}.rope.scaling.factor")
    if factor is None:
        raise _error(path, f"GGUF metadata lacks {arch}.rope.scaling.factor")
    if not isinstance(factor, int | float) or isinstance(factor, bool):
        raise _error(path, f"GGUF metadata {arch}.rope.scaling.factor must be a number, got {factor!r}")
    return RopeScaling("linear", float(factor))


def tokenizer_model(path: Path) -> str | None:
    """The GGUF file's ``tokenizer.ggml.model`` (None when it carries no tokenizer)."""
    value = _field(_reader(path), "tokenizer.ggml.model")
    return None if value is None else str(value)


def read_config(path: Path) -> DecoderConfig:
    return _config(_reader(path), path)


def _native_name(name: str) -> str | None:
    top = {"token_embd.weight": "embed.weight", "output_norm.weight": "ln_final.weight",
           "output.weight": "unembed.weight"}
    if name in top:
        return top[name]
    parts = name.split(".")
    if parts[0] != "blk" or len(parts) != 4:
        return None
    layer, sub, kind = parts[1], parts[2], parts[3]
    block = {"attn_norm": "ln1", "ffn_norm": "ln2", "attn_q": "attn.q", "attn_k": "attn.k",
             "attn_v": "attn.v", "attn_output": "attn.o", "ffn_gate": "mlp.w_gate",
             "ffn_up": "mlp.w_in", "ffn_down": "mlp.w_out"}
    if sub not in block:
        return None
    return f"blocks.{layer}.{block[sub]}.{kind}"


def _unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary interleave of a q or k projection (rows grouped by head)."""
    rows = weight.shape[0]
    rest = weight.shape[1:]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def read_checkpoint(path: Path) -> tuple[DecoderConfig, dict[str, torch.Tensor]]:
    """Config and dequantised fp32 weights in the decoder's names."""
    reader = _reader(path)
    config = _config(reader, path)
    state = {}
    for tensor in reader.tensors:
        type_name = tensor.tensor_type.name
        if type_name not in SUPPORTED_TYPES:
            raise _error(
                path,
                f"tensor {tensor.name} uses quantisation {type_name}, which the loader does not "
                f"dequantise (supported: {', '.join(sorted(SUPPORTED_TYPES))})",
            )
        name = _native_name(tensor.name)
        if name is None:
            raise _error(path, f"unexpected GGUF tensor {tensor.name}")
        try:
            weight = np.array(gguf.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        except (NotImplementedError, ValueError) as error:
            raise _error(path, f"cannot dequantise {tensor.name} ({type_name}): {error}") from None
        if config.model_type in INTERLEAVED_ROTARY and ".attn_q." in tensor.name:
            weight = _unpermute(weight, config.n_heads)
        elif config.model_type in INTERLEAVED_ROTARY and ".attn_k." in tensor.name:
            weight = _unpermute(weight, config.kv_heads)
        state[name] = torch.from_numpy(np.ascontiguousarray(weight))
    return config, state
