"""Tokenizers for checkpoints, where they have one.

The embedded SmolLM2 GGUF and transformers folders carry a tokenizer; zoo checkpoints do not
(their probes fall back to bytes, see :mod:`workbench.inputs`). Token strings are untrusted text:
reports escape them.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from workbench.errors import CheckpointError
from workbench.loading import gguf
from workbench.loading.sources import check_regular_file, first_line, read_json, resolve

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(source: str | os.PathLike | None) -> Any | None:
    """A transformers tokenizer for ``source``, or None when it has none.

    A checkpoint that carries tokenizer files which cannot be loaded (a JSON list, garbage, an
    empty file, a GGUF tokenizer model transformers does not know) is refused with a
    CheckpointError naming the file: it never silently falls back to bytes.
    """
    kind, path = resolve(source)
    if kind == "hf-config":
        return None
    if kind == "gguf":
        model = gguf.tokenizer_model(path)
        if model is None:
            return None
        return _load(path, f"{path}: its tokenizer (tokenizer.ggml.model {model!r})", gguf_file=path.name)
    present = [path / name for name in TOKENIZER_FILES if (path / name).exists()]
    if not present:
        return None
    for file in present:
        if check_regular_file(file) == 0:
            raise CheckpointError(f"{file}: the tokenizer file is empty")
        if file.suffix == ".json":
            read_json(file)  # an object, UTF-8, not absurdly nested or large
    return _load(path, str(present[0]))


def _load(path: Path, label: str, **keywords: Any) -> Any:
    """AutoTokenizer on ``path``; any failure of the untrusted files is one CheckpointError line."""
    # transformers (about a second to import) only when a tokenizer is read: `workbench kv` never does
    from transformers import AutoTokenizer  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    folder = path.parent if keywords.get("gguf_file") else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **keywords)
        tokenizer.encode("a", add_special_tokens=False)
        size = len(tokenizer)
    except Exception as error:  # noqa: BLE001 - transformers and tokenizers raise many types on bad files
        raise CheckpointError(f"{label}: cannot be loaded as a tokenizer ({first_line(error)[:200]})") from None
    if size == 0:
        raise CheckpointError(f"{label}: the tokenizer has an empty vocabulary")
    return tokenizer


def attach_tokenizer(model: Any, source: str | os.PathLike | None) -> None:
    """Give ``model`` the tokenizer of ``source``, loaded when first used (None if it has none)."""
    model.set_tokenizer_loader(functools.partial(load_tokenizer, source))  # picklable, unlike a lambda


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE (GPT-2, SmolLM2) spells each byte as one printable character: bytes that
    are printable Latin-1 stand for themselves, the other 68 take the characters from U+0100 on,
    in byte order. Returns character -> byte."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in printable]
    alphabet = {chr(b): b for b in printable}
    alphabet.update({chr(0x100 + index): b for index, b in enumerate(shifted)})
    return alphabet


_BYTE_LEVEL = _byte_level_alphabet()


def byte_label(value: int) -> str:
    """A byte as a token label: the character for printable ASCII, space and newline, else
    ``<0xNN>`` (the spelling of sentencepiece's byte tokens)."""
    if 0x20 <= value < 0x7F or value in (0x0A, 0x09):
        return chr(value)
    return f"<0x{value:02X}>"


def _bytes_label(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # part of a multi-byte character
        return "".join(byte_label(b) for b in data)


def _readable(tokenizer: Any, token_id: int) -> str:
    text = tokenizer.decode([token_id])
    if text and "\ufffd" not in text:
        return text
    try:
        piece = tokenizer.convert_ids_to_tokens(token_id)
    except Exception:  # noqa: BLE001 - a tokenizer without the id
        piece = None
    if isinstance(piece, str) and piece:
        if all(char in _BYTE_LEVEL for char in piece):  # byte-level BPE: decode its bytes
            return _bytes_label(bytes(_BYTE_LEVEL[char] for char in piece))
        return piece  # sentencepiece "<0xE2>", a special token's own spelling
    return text or f"#{token_id}"


def token_labels(tokenizer: Any | None, token_ids: list[int]) -> list[str]:
    """One readable label per token: its decoded text; a piece of a multi-byte character as its
    bytes (``<0xE2><0x80>``); a special token as it is spelled (``<|im_start|>``). Without a
    tokenizer the probe's ids are UTF-8 bytes (mod the vocabulary, see :mod:`workbench.inputs`),
    shown as characters (``h``, not ``#104``)."""
    if tokenizer is None:
        return [byte_label(i) if 0 <= i < 256 else f"#{i}" for i in token_ids]
    labels = []
    for token_id in token_ids:
        try:
            labels.append(_readable(tokenizer, token_id))
        except Exception:  # noqa: BLE001 - a tokenizer that cannot decode a single id
            labels.append(f"#{token_id}")
    return labels
