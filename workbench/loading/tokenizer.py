"""Tokenizers for checkpoints, where they have one.

The embedded SmolLM2 GGUF and transformers folders carry a tokenizer; zoo checkpoints do not
(their probes fall back to bytes, see :mod:`workbench.inputs`). Token strings are untrusted text:
reports escape them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from workbench.loading.sources import resolve

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(source: str | os.PathLike | None) -> Any | None:
    """A transformers tokenizer for ``source``, or None when it has none."""
    kind, path = resolve(source)
    if kind == "native":
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            return None
    elif kind == "hf" and not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    elif kind == "hf-config":
        return None
    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        if kind == "gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError):
        return None


def token_labels(tokenizer: Any | None, token_ids: list[int]) -> list[str]:
    """One readable label per token (the decoded text of each token, or ``#id``)."""
    if tokenizer is None:
        return [f"#{i}" for i in token_ids]
    labels = []
    for token_id in token_ids:
        try:
            labels.append(tokenizer.decode([token_id]))
        except Exception:  # a tokenizer that cannot decode a single id
            labels.append(f"#{token_id}")
    return labels
