"""Writing tiny GGUF files as llama.cpp lays them out (for the GGUF loader's tests and the CLI's)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def _llama_cpp_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The rotary interleave llama.cpp's converter applies to llama q/k rows (the loader undoes it)."""
    rows, rest = weight.shape[0], weight.shape[1:]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


GGUF_NAMES = {
    "embed.weight": "token_embd.weight",
    "ln_final.weight": "output_norm.weight",
    "unembed.weight": "output.weight",
    "ln1": "attn_norm",
    "ln2": "ffn_norm",
    "attn.q": "attn_q",
    "attn.k": "attn_k",
    "attn.v": "attn_v",
    "attn.o": "attn_output",
    "mlp.w_gate": "ffn_gate",
    "mlp.w_in": "ffn_up",
    "mlp.w_out": "ffn_down",
}


def write_gguf(
    model,
    path: Path,
    arch: str = "llama",
    quant_tensor: str | None = None,
    rope_scaling: tuple[str, float] | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``model`` (a llama-style HookedDecoder) as an fp32 GGUF file, as llama.cpp lays it out.

    ``quant_tensor`` is written as IQ2_XXS bytes instead; ``rope_scaling`` is (type, factor).
    """
    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    writer.add_block_count(config.n_layers)
    writer.add_context_length(config.max_positions)
    writer.add_embedding_length(config.d_model)
    writer.add_feed_forward_length(config.d_mlp)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_rope_dimension_count(config.d_head)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_vocab_size(config.vocab_size)
    if rope_scaling is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType(rope_scaling[0]))
        writer.add_rope_scaling_factor(rope_scaling[1])
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "unembed.weight" and config.tie_embeddings:
            continue
        array = tensor.numpy().astype(np.float32)
        if name.startswith("blocks."):
            _, layer, *module, kind = name.split(".")
            gguf_name = f"blk.{layer}.{GGUF_NAMES['.'.join(module)]}.{kind}"
            if arch == "llama" and module == ["attn", "q"]:
                array = _llama_cpp_rows(array, config.n_heads)
            elif arch == "llama" and module == ["attn", "k"]:
                array = _llama_cpp_rows(array, config.kv_heads)
        else:
            gguf_name = GGUF_NAMES[name]
        tensors[gguf_name] = array
    tensors.update(extra_tensors or {})
    for gguf_name, array in tensors.items():
        if gguf_name == quant_tensor:  # IQ2_XXS bytes (66 per block of 256) of the same element count
            raw = np.zeros((array.size // 256, 66), dtype=np.uint8)
            writer.add_tensor(gguf_name, raw, raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS)
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
