"""Seeded structured text: Python functions, numbered lists, CSV tables and JSON records.

The second domain of the probe inputs besides the natural-text corpus (MoE experts often
specialise on code and lists versus prose): :func:`structured_text` writes it,
:func:`structured_probe` tokenizes it as :mod:`workbench.inputs` does natural text (BOS first when
the tokenizer has one; UTF-8 bytes mod the vocabulary without a tokenizer). Every draw uses its
own CPU ``torch.Generator``, so the same seed gives the same text everywhere.
"""

from __future__ import annotations

import torch

from workbench.errors import InputError
from workbench.inputs import ProbeInput, Tokenizer, bos_id, check_ids_fit, encode_text

SEPARATOR = "\n\n"  # between two snippets


# Words the structured-text generator fills its templates with (plain English nouns and verbs).
_STRUCTURED_WORDS = (
    "apple", "river", "stone", "window", "engine", "garden", "ticket", "signal", "paper", "cloud",
    "market", "bridge", "letter", "forest", "copper", "silver", "harbor", "module", "vector", "record",
    "count", "total", "index", "value", "offset", "buffer", "parse", "load", "store", "merge",
)


def _structured_snippet(generator: torch.Generator) -> str:
    """One snippet of structured text: a Python function, a numbered list, a CSV table or a JSON
    record, filled with seeded words and numbers."""

    def word() -> str:
        return _STRUCTURED_WORDS[int(torch.randint(len(_STRUCTURED_WORDS), (), generator=generator))]

    def number(high: int = 100) -> int:
        return int(torch.randint(high, (), generator=generator))

    form = int(torch.randint(4, (), generator=generator))
    rows = 2 + number(4)
    if form == 0:
        name, first, second = word(), word(), word()
        body = [f"def {name}_{first}({first}, {second}={number()}):",
                f"    \"\"\"Return the {word()} of {first} and {second}.\"\"\"",
                f"    {word()} = [{first} * i + {second} for i in range({number(20)})]"]
        body += [f"    if {first} > {number()}:\n        {second} -= {number(10)}" for _ in range(rows - 2)]
        body.append(f"    return sum({second} for _ in range({number(9) + 1}))")
        return "\n".join(body)
    if form == 1:
        return "\n".join(f"{i + 1}. {word().capitalize()} {word()}: {number(1000)}" for i in range(rows))
    if form == 2:
        header = f"id,{word()},{word()},amount"
        lines = [f"{i},{word()},{word()},{number(1000)}.{number(100):02d}" for i in range(rows)]
        return "\n".join([header, *lines])
    fields = ", ".join(f'"{word()}": {number(1000)}' for _ in range(rows))
    return f'{{"name": "{word()}", {fields}, "tags": ["{word()}", "{word()}"]}}'


def structured_text(n_chars: int, seed: int = 0) -> str:
    """At least ``n_chars`` characters of seeded structured text: Python functions, numbered
    lists, CSV tables and JSON records, separated by blank lines. The same seed gives the same
    text on every machine."""
    if n_chars < 1:
        raise ValueError(f"n_chars must be at least 1, got {n_chars}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    parts: list[str] = []
    size = 0
    while size < n_chars:
        parts.append(_structured_snippet(generator))
        size += len(parts[-1]) + len(SEPARATOR)
    return SEPARATOR.join(parts)


def structured_text_tokens(
    tokenizer: Tokenizer | None, length: int, batch: int = 1, seed: int = 0, vocab_size: int | None = None,
    with_bos: bool = True,
) -> torch.Tensor:
    """Rows of structured text (code, lists, tables, records), shape ``[batch, length]``; row i
    is generated from seed ``seed + i``, after the tokenizer's BOS when it has one (``with_bos``).
    Without a tokenizer the text is read as UTF-8 bytes modulo ``vocab_size``."""
    if length < 1 or batch < 1:
        raise InputError(f"length and batch must be at least 1, got {length} and {batch}")
    bos = bos_id(tokenizer) if with_bos else None
    prefix = [] if bos is None else [bos]
    rows = []
    for row in range(batch):
        n_chars = 4 * length
        ids: list[int] = []
        while len(prefix) + len(ids) < length:  # tokenizers take 2-6 characters per token: grow to fit
            ids = encode_text(tokenizer, structured_text(n_chars, seed + row), vocab_size)
            n_chars *= 2
        rows.append(torch.tensor((prefix + ids)[:length], dtype=torch.long))
    return torch.stack(rows)  # [B, T]


def structured_probe(
    length: int, tokenizer: Tokenizer | None = None, vocab_size: int | None = None, seed: int = 0, batch: int = 1
) -> ProbeInput:
    """A probe of structured text (kind ``structured``): code, lists, tables and records."""
    tokens = structured_text_tokens(tokenizer, length, batch, seed, vocab_size)
    check_ids_fit(tokens, vocab_size)
    source = "tokenizer" if tokenizer is not None else "UTF-8 bytes mod vocab (no tokenizer)"
    return ProbeInput(
        name=f"structured-T{length}-s{seed}",
        kind="structured",
        tokens=tokens,
        seed=seed,
        description=f"{length} tokens of generated code, lists, tables and records ({source}), seed {seed}",
    )
