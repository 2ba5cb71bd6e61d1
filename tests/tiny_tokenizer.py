"""A character-level tokenizer for the tiny test models (vocabulary 96, no download).

Ids: 0 ``<pad>``, 1 ``<s>`` (BOS), 2 ``</s>`` (EOS), then one id per ASCII character from
space (32) to ``|`` (124). Used by the library tests and the TransformerLens benchmark.
"""

from __future__ import annotations

from typing import Any

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
