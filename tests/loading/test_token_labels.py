"""Token labels for the report: readable characters for byte probes, byte-level BPE pieces and
special tokens (loading/tokenizer.py)."""

from __future__ import annotations

import copy

import pytest

from workbench.loading.tokenizer import byte_label, token_labels


def test_byte_probes_are_labelled_as_characters():
    """Zoo checkpoints have no tokenizer: their probes are UTF-8 bytes, shown as such (not "#104")."""
    assert token_labels(None, list(b"hi!\n")) == ["h", "i", "!", "\n"]
    assert [byte_label(b) for b in (0x00, 0x1B, 0x7F, 0xE2)] == ["<0x00>", "<0x1B>", "<0x7F>", "<0xE2>"]
    assert token_labels(None, [300]) == ["#300"]


def test_byte_level_bpe_pieces_and_special_tokens_are_readable():
    from transformers import AutoTokenizer

    from workbench.loading.sources import smollm2_path

    try:
        path = smollm2_path()
    except Exception as error:  # noqa: BLE001 - the embedded model is an optional install
        pytest.skip(f"SmolLM2 is not installed ({error})")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = "日本 <|im_start|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    labels = token_labels(tokenizer, ids)
    assert "\ufffd" not in "".join(labels), labels  # no replacement characters
    assert "<|im_start|>" in labels
    assert any(label.strip().startswith("<0x") for label in labels)  # a piece of 日 as its bytes
    joined = "".join(labels)
    assert "本" in joined
    assert copy.deepcopy(labels) == token_labels(tokenizer, ids)  # deterministic
