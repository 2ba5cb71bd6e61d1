"""Shared test helpers: tiny configs and family cases, weight init, padded batches.

Imported by test modules and by conftest.py's fixtures (never import conftest itself)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workbench.config import DecoderConfig, RopeScaling
from workbench.model.decoder import HookedDecoder

VOCAB = 96


SEQ_LEN = 12


# Left-padded batch: row lengths (real tokens) of a [3, SEQ_LEN] batch.
ROW_LENGTHS = (SEQ_LEN, 9, 5)


def init_weights(
    model: nn.Module, std: float = 0.15, seed: int = 0, gemma_norms_at_zero: bool = False
) -> nn.Module:
    """Seeded normal(0, std) weights; norm scales near 1 so activations keep their size.

    ``gemma_norms_at_zero``: start Gemma's norm weights near 0 instead, their identity value in
    Gemma's ``1 + weight`` norms."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                if "norm" in type(module).__name__.lower() and name == "weight":
                    gemma = gemma_norms_at_zero and "gemma" in type(module).__name__.lower()
                    param.copy_((0.0 if gemma else 1.0) + 0.1 * noise)
                else:
                    param.copy_(std * noise)
    return model


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op torch thread inside the block; the previous count comes back on exit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def padded_batch(
    vocab_size: int = VOCAB, lengths: tuple[int, ...] = ROW_LENGTHS, seq_len: int = SEQ_LEN, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ``(input_ids, attention_mask, position_ids)``, each ``[len(lengths), seq_len]``.

    Positions count real tokens only (as transformers' ``generate`` does for left padding).
    """
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (len(lengths), seq_len), generator=generator)
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, seq_len - length :] = 1
    input_ids = input_ids.masked_fill(mask == 0, 0)
    position_ids = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    return input_ids, mask, position_ids


@dataclass(frozen=True)
class FamilyCase:
    """A tiny transformers config of one family/variant and how to drive its reference model."""

    name: str
    model_type: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    attn_implementation: str = "sdpa"
    takes_position_ids: bool = True  # BLOOM derives ALiBi from the mask instead

    def hf_config(self):
        import transformers

        return transformers.AutoConfig.for_model(self.model_type, **self.kwargs)

    def hf_model(self, seed: int = 0):
        """A seeded, randomly initialised fp32 transformers model in eval mode."""
        import transformers

        config = self.hf_config()
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, attn_implementation=self.attn_implementation
        )
        return init_weights(model, seed=seed).eval()


_LLAMA = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)


def _rope(kind: str, **params: Any) -> dict[str, Any]:
    return {"rope_parameters": {"rope_type": kind, "rope_theta": 10000.0, **params}}


_CASES = [
    FamilyCase(
        "gpt2",
        "gpt2",
        dict(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=1, eos_token_id=2
        ),
    ),
    FamilyCase(
        "gpt2-eager",
        "gpt2",
        dict(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=1, eos_token_id=2
        ),
        attn_implementation="eager",
    ),
    FamilyCase("llama", "llama", _LLAMA),
    FamilyCase("llama-eager", "llama", _LLAMA, attn_implementation="eager"),
    FamilyCase(
        "llama-mqa-tied-bias",
        "llama",
        {
            **_LLAMA,
            "num_key_value_heads": 1,
            "tie_word_embeddings": True,
            "attention_bias": True,
            "mlp_bias": True,
        },
    ),
    FamilyCase(
        "llama-rope-llama3",
        "llama",
        {
            **_LLAMA,
            **_rope(
                "llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        },
    ),
    FamilyCase(
        "llama-rope-yarn",
        "llama",
        {**_LLAMA, **_rope("yarn", factor=4.0, original_max_position_embeddings=16)},
    ),
    FamilyCase("llama-rope-linear", "llama", {**_LLAMA, **_rope("linear", factor=2.0)}),
    # max_position_embeddings below SEQ_LEN, so the dynamic NTK base actually grows.
    FamilyCase(
        "llama-rope-dynamic",
        "llama",
        {**_LLAMA, "max_position_embeddings": 8, **_rope("dynamic", factor=2.0)},
    ),
    # A window of 4 < SEQ_LEN, so it changes the result.
    FamilyCase("mistral-window", "mistral", {**_LLAMA, "sliding_window": 4}),
    FamilyCase("qwen2", "qwen2", _LLAMA),
    FamilyCase(
        "qwen2-window",
        "qwen2",
        {
            **_LLAMA,
            "num_hidden_layers": 3,
            "use_sliding_window": True,
            "sliding_window": 4,
            "max_window_layers": 1,
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
        },
    ),
    FamilyCase("mixtral", "mixtral", {**_LLAMA, "num_local_experts": 4, "num_experts_per_tok": 2}),
    # Layer 1 is dense (mlp_only_layers) with the full intermediate_size; 0 and 2 are MoE.
    FamilyCase(
        "qwen2_moe",
        "qwen2_moe",
        {
            **_LLAMA,
            "num_hidden_layers": 3,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 24,
            "norm_topk_prob": False,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [1],
        },
    ),
    # transformers has no SDPA path for BLOOM: eager only. 6 heads: ALiBi's non-power-of-2 rule.
    FamilyCase(
        "bloom",
        "bloom",
        dict(vocab_size=VOCAB, hidden_size=36, n_layer=2, n_head=6, bos_token_id=1, eos_token_id=2),
        attn_implementation="eager",
        takes_position_ids=False,
    ),
    # qkv_bias off, renormalised top-k, every second layer sparse (decoder_sparse_step 2).
    FamilyCase(
        "qwen2_moe-step2",
        "qwen2_moe",
        {
            **_LLAMA,
            "num_hidden_layers": 3,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 24,
            "qkv_bias": False,
            "norm_topk_prob": True,
            "decoder_sparse_step": 2,
        },
    ),
    # DeepSeek-style YaRN: the attention factor comes from mscale / mscale_all_dim.
    FamilyCase(
        "llama-rope-yarn-mscale",
        "llama",
        {
            **_LLAMA,
            **_rope("yarn", factor=4.0, original_max_position_embeddings=16, mscale=1.0, mscale_all_dim=0.5),
        },
    ),
    FamilyCase(
        "bloom-4-heads",
        "bloom",
        dict(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2),
        attn_implementation="eager",
        takes_position_ids=False,
    ),
    # The families with a module each since issue 13 (tests/loading/test_families_*.py test their
    # mechanisms in depth); here they also go through every checkpoint layout.
    FamilyCase(
        "qwen3_moe",
        "qwen3_moe",
        {**_LLAMA, "num_hidden_layers": 3, "num_experts": 4, "num_experts_per_tok": 2,
         "moe_intermediate_size": 16, "mlp_only_layers": [1]},
    ),
    FamilyCase(
        "gemma2",
        "gemma2",
        {**_LLAMA, "head_dim": 8, "query_pre_attn_scalar": 16, "sliding_window": 4,
         "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0},
        attn_implementation="eager",
    ),
    FamilyCase("phi3", "phi3", {**_LLAMA, "pad_token_id": 0}),
    FamilyCase(
        "mpt",
        "mpt",
        dict(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2, max_seq_len=64, bos_token_id=1, eos_token_id=2,
             attn_config={"clip_qkv": 0.3}),
        attn_implementation="eager",
        takes_position_ids=False,
    ),
    FamilyCase(
        "deepseek_v3",
        "deepseek_v3",
        {**_LLAMA, "num_hidden_layers": 3, "num_key_value_heads": 4, "moe_intermediate_size": 16,
         "q_lora_rank": 12, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 6,
         "n_routed_experts": 8, "n_group": 4, "topk_group": 2, "num_experts_per_tok": 2, "n_shared_experts": 1,
         "first_k_dense_replace": 1, "routed_scaling_factor": 2.5},
    ),
]


FAMILY_CASES: dict[str, FamilyCase] = {case.name: case for case in _CASES}


_TINY = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=48, max_positions=64)


TINY_DECODERS: dict[str, DecoderConfig] = {
    "llama": DecoderConfig(**_TINY, n_kv_heads=2),
    "window": DecoderConfig(**_TINY, n_kv_heads=2, sliding_window=4),
    "yarn": DecoderConfig(**_TINY, rope_scaling=RopeScaling("yarn", 4.0, original_max_positions=16)),
    "gpt2": DecoderConfig(
        **_TINY,
        positions="learned",
        norm="layernorm",
        activation="gelu_tanh",
        gated_mlp=False,
        qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
    ),
    "alibi": DecoderConfig(
        **{**_TINY, "n_heads": 6, "d_head": 6, "d_model": 36},
        positions="alibi",
        norm="layernorm",
        activation="gelu_tanh",
        gated_mlp=False,
        qkv_bias=True,
        embed_norm=True,
    ),
    "moe": DecoderConfig(
        **{**_TINY, "n_layers": 3},
        n_kv_heads=2,
        n_experts=4,
        top_k=2,
        moe_layers=(0, 2),
        d_expert=16,
        d_shared_expert=24,
        norm_topk_prob=False,
    ),
}


@dataclass
class SmolLM2Pair:
    workbench: HookedDecoder
    reference: Any  # transformers LlamaForCausalLM, fp32, dequantised from the same GGUF file
    tokenizer: Any


# --- a character-level tokenizer for the tiny models -----------------------------------------
# Ids: 0 ``<pad>``, 1 ``<s>`` (BOS), 2 ``</s>`` (EOS), then one id per ASCII character from
# space (32) to ``|`` (124): 96 ids, VOCAB. Used by the library tests and the TransformerLens
# equivalence benchmark.

SPECIALS = ["<pad>", "<s>", "</s>"]
CHARACTERS = [chr(code) for code in range(32, 125)]


def tiny_tokenizer() -> Any:
    """A transformers ``PreTrainedTokenizerFast`` with 96 ids (save it with ``save_pretrained``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIALS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<pad>"
    )
