"""Seeded probe inputs: random tokens, repeated random blocks, natural text and user text.

Every probe the workbench runs through a model starts here. Five kinds:

- ``random``: uniformly drawn token ids, the model's behaviour with no usable context;
- ``repeated``: one random block repeated, the induction / copying probe: a model that uses
  its context has a low loss from the second repeat on;
- ``natural``: a window of the shipped public-domain corpus (``probes/corpus/*.txt``);
- ``structured``: code, lists, tables and records (:mod:`workbench.structured_text`);
- ``user``: text the user gave (``--prompt`` / ``--text``).

Determinism: every draw uses its own CPU ``torch.Generator`` seeded with ``manual_seed(seed)``,
never the global RNG, so the same seed gives the same tensor on every machine; move the tensor
to a device afterwards.

Tokenizers: anything with ``encode(text) -> list[int]``. A transformers tokenizer is called with
``add_special_tokens=False``, and a ``tokenizers.Encoding`` result is read through its ``.ids``;
natural and user probes then start with the tokenizer's BOS id when it has one
(``bos_token_id``), as real prompts do. A model without a tokenizer (the zoo's synthetic vocabularies) reads text
as its UTF-8 bytes modulo ``vocab_size``; the probe's description says so.

Shape legend: B batch rows, T positions. Token tensors are int64 ``[B, T]``.
"""

from __future__ import annotations

import codecs
import functools
import importlib.resources
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from workbench.errors import InputError
from workbench.units import plural

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; only named in annotations

ProbeKind = Literal["random", "repeated", "natural", "structured", "user"]

# Ids below this are skipped by random probes: BOS/EOS/PAD/UNK and chat or code markers sit at
# the bottom of Llama, SmolLM2 and Mistral style vocabularies (SmolLM2: ids 0-16).
DEFAULT_LOW_ID = 16
CORPUS_PACKAGE = "workbench.probes"
CORPUS_FOLDER = "corpus"
# Between two corpus files, and between two passes when a natural probe wraps around.
TEXT_SEPARATOR = "\n\n"
# User text: characters encoded per wanted token (English averages 3-5), grown 4x when short.
PREFIX_CHARS_PER_TOKEN = 8
# --text reads at most this much of a file: far more than the longest probe the memory guard
# lets through (about 10^6 tokens on this host) at the ~4 bytes a token averages.
TEXT_READ_LIMIT_BYTES = 16 * 2**20



class Tokenizer(Protocol):
    """What the workbench needs of a tokenizer: text to a list of ids."""

    def encode(self, text: str, /) -> list[int]: ...


@dataclass(frozen=True)
class ProbeInput:
    """Token ids to run through a model, and what they are.

    ``seed`` is None for user text; ``block_len`` is set for repeated blocks only (the first
    repeat starts at position ``block_len``).
    """

    name: str
    kind: ProbeKind
    tokens: torch.Tensor  # [B, T] int64
    seed: int | None
    description: str
    block_len: int | None = None

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def check_sizes(**sizes: int) -> None:
    """Refuse any size under 1, naming it (an :class:`InputError`)."""
    for name, value in sizes.items():
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")


def _id_range(vocab_size: int, low: int | None, high: int | None) -> tuple[int, int]:
    """[low, high) of the ids random probes draw from."""
    check_sizes(vocab_size=vocab_size)
    if low is None:
        # tiny synthetic vocabularies have no special ids worth 16 slots: keep 3/4 of them
        low = min(DEFAULT_LOW_ID, vocab_size // 4)
    high = vocab_size if high is None else high
    if not 0 <= low < high <= vocab_size:
        raise InputError(f"need 0 <= low < high <= vocab_size, got {low}, {high}, {vocab_size}")
    return low, high


def random_tokens(
    vocab_size: int,
    length: int,
    batch: int = 1,
    seed: int = 0,
    low: int | None = None,
    high: int | None = None,
) -> torch.Tensor:
    """Uniform token ids in ``[low, high)``, shape ``[batch, length]``.

    ``low`` defaults to ``DEFAULT_LOW_ID`` (a quarter of the vocabulary when that is smaller)
    to keep special tokens out; ``high`` defaults to ``vocab_size``.
    """
    check_sizes(length=length, batch=batch)
    low, high = _id_range(vocab_size, low, high)
    return torch.randint(low, high, (batch, length), generator=_generator(seed))


def repeated_random_blocks(
    vocab_size: int,
    block_len: int,
    n_repeats: int,
    batch: int = 1,
    seed: int = 0,
    low: int | None = None,
    high: int | None = None,
) -> torch.Tensor:
    """One random block per row, repeated: shape ``[batch, block_len * n_repeats]``.

    Position ``t >= block_len`` holds the same id as ``t - block_len``. Ids are drawn as in
    :func:`random_tokens`.
    """
    check_sizes(block_len=block_len, n_repeats=n_repeats)
    block = random_tokens(vocab_size, block_len, batch, seed, low, high)  # [B, block_len]
    return block.repeat(1, n_repeats)


def _corpus_dir() -> Traversable:
    """The corpus folder of the installed package, else the one next to ``workbench/``."""
    try:
        folder = importlib.resources.files(CORPUS_PACKAGE) / CORPUS_FOLDER
        if folder.is_dir():
            return folder
    except (ImportError, TypeError, AttributeError):  # not installed; older namespace packages
        pass
    folder = Path(__file__).resolve().parent.parent / "probes" / CORPUS_FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(f"no probe corpus: neither {CORPUS_PACKAGE} nor {folder} has one")
    return folder


@functools.cache
def load_corpus_text() -> str:
    """The shipped natural-text corpus: every ``probes/corpus/*.txt`` in sorted name order,
    joined by a blank line. Sources and licences are in ``probes/corpus/README.md``."""
    folder = _corpus_dir()
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".txt")), key=lambda f: f.name)
    if not files:
        raise FileNotFoundError(f"the probe corpus folder {folder} has no .txt file")
    return TEXT_SEPARATOR.join(f.read_text(encoding="utf-8") for f in files)


def _encode_keywords(encode: Callable[..., object]) -> dict[str, bool]:
    """Keywords for ``encode``: no special tokens, and for transformers tokenizers no warning
    that the corpus is longer than the model's context (we cut windows from it)."""
    try:
        parameters = inspect.signature(encode).parameters
    except (TypeError, ValueError):
        return {}
    keywords: dict[str, bool] = {}
    if "add_special_tokens" in parameters:
        keywords["add_special_tokens"] = False
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        if "verbose" in parameters or takes_any:  # transformers passes **kwargs on to verbose
            keywords["verbose"] = False
    return keywords


def encode_text(tokenizer: Tokenizer | None, text: str, vocab_size: int | None = None) -> list[int]:
    """Ids of ``text``: the tokenizer's without special tokens, or UTF-8 bytes mod vocab_size."""
    if tokenizer is None:
        if vocab_size is None:
            raise InputError("text needs a tokenizer or a vocab_size for the byte-level fallback")
        check_sizes(vocab_size=vocab_size)
        return [byte % vocab_size for byte in text.encode("utf-8")]
    encoded = tokenizer.encode(text, **_encode_keywords(tokenizer.encode))
    ids = getattr(encoded, "ids", encoded)  # tokenizers.Encoding keeps its ids in .ids
    return [int(i) for i in ids]


def _separator_ids(tokenizer: Tokenizer | None, vocab_size: int | None) -> list[int]:
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos_id, int):
        return [eos_id]
    return encode_text(tokenizer, TEXT_SEPARATOR, vocab_size)


def natural_text_tokens(
    tokenizer: Tokenizer | None,
    length: int,
    batch: int = 1,
    seed: int = 0,
    corpus: str | None = None,
    vocab_size: int | None = None,
    with_bos: bool = True,
) -> torch.Tensor:
    """Windows of natural text, shape ``[batch, length]``; each row starts at a seeded offset,
    after the tokenizer's BOS when it has one (``with_bos=False``: the bare window).

    ``corpus`` defaults to :func:`load_corpus_text`. When the corpus has fewer than ``length``
    tokens it wraps around: the stream is corpus, separator, corpus, separator, ..., where the
    separator is the tokenizer's EOS id, or the ids of a blank line when it has none. Rows may
    then start anywhere in the first pass. With ``tokenizer=None`` the text is read as UTF-8
    bytes modulo ``vocab_size`` (for models with a synthetic vocabulary and no tokenizer).
    """
    check_sizes(length=length, batch=batch)
    bos = bos_id(tokenizer) if with_bos else None
    if bos is not None:
        if length < 2:
            raise InputError(f"a natural probe after BOS needs at least 2 tokens, got {length}")
        body = natural_text_tokens(tokenizer, length - 1, batch, seed, corpus, vocab_size, with_bos=False)
        return torch.cat([torch.full((batch, 1), bos, dtype=torch.long), body], dim=1)  # [B, T]
    text = load_corpus_text() if corpus is None else corpus
    ids = encode_text(tokenizer, text, vocab_size)
    if not ids:
        raise InputError("the natural-text corpus is empty or encodes to no tokens")
    generator = _generator(seed)
    if len(ids) >= length:
        stream = ids
        starts = torch.randint(0, len(ids) - length + 1, (batch,), generator=generator)
    else:
        one_pass = ids + _separator_ids(tokenizer, vocab_size)
        n_passes = -(-(length + len(one_pass)) // len(one_pass))  # ceil: room for any start
        stream = one_pass * n_passes
        starts = torch.randint(0, len(one_pass), (batch,), generator=generator)
    stream_t = torch.tensor(stream, dtype=torch.long)
    rows = [stream_t[start : start + length] for start in starts.tolist()]
    return torch.stack(rows)  # [B, T]


def bos_id(tokenizer: Tokenizer | None) -> int | None:
    """The tokenizer's BOS id, when it has one (probes start with it, as real prompts do)."""
    value = getattr(tokenizer, "bos_token_id", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _check_utf8(text: str) -> None:
    """Text from the command line may hold lone surrogates (undecodable argv bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(f"--prompt is not valid UTF-8 text (an undecodable byte at character {error.start})") from None


def text_tokens(tokenizer: Tokenizer | None, text: str, vocab_size: int | None = None,
                max_tokens: int | None = None) -> torch.Tensor:
    """The user's text as ids, shape ``[1, T]``, after the tokenizer's BOS when it has one;
    raises InputError for empty text.

    With ``max_tokens`` only a growing prefix of the text is encoded, enough for that many
    tokens: a 200 MB file is never tokenized whole to keep its first thousand tokens.
    """
    _check_utf8(text)
    if not text.strip():
        raise InputError("the input text is empty: give some text to --prompt or --text")
    bos = bos_id(tokenizer)
    prefix = [] if bos is None else [bos]
    if max_tokens is None:
        ids = encode_text(tokenizer, text, vocab_size)
    else:
        check_sizes(max_tokens=max_tokens)
        chars = max(PREFIX_CHARS_PER_TOKEN * max_tokens, 4096)
        while True:
            ids = encode_text(tokenizer, text[:chars], vocab_size)
            # one spare token: the last one of a cut prefix may differ from the whole text's
            if chars >= len(text) or len(ids) > max_tokens:
                break
            chars *= 4
        ids = ids[: max(max_tokens - len(prefix), 0)]
    if not ids:
        raise InputError("the input text encodes to no tokens")
    return torch.tensor([prefix + ids], dtype=torch.long)


def read_text_file(path: Path, limit_bytes: int | None = None) -> str:
    """The UTF-8 text of ``path``, at most ``limit_bytes`` (default TEXT_READ_LIMIT_BYTES) of it:
    a probe never needs more, and a huge file is not read whole. A multi-byte character cut by
    the limit is dropped. Raises InputError for anything but a regular file, and
    UnicodeDecodeError / OSError as ``Path.read_text`` does."""
    limit = TEXT_READ_LIMIT_BYTES if limit_bytes is None else limit_bytes
    if path.exists() and not path.is_file():
        raise InputError(f"{path}: not a regular file")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) <= limit:
        return data.decode("utf-8")
    return codecs.getincrementaldecoder("utf-8")().decode(data[:limit])  # holds back a cut character


def check_ids_fit(tokens: torch.Tensor, vocab_size: int | None) -> None:
    """Refuse token ids outside the model's vocabulary: the tokenizer does not match the model."""
    if vocab_size is not None and int(tokens.max()) >= vocab_size:
        raise InputError(f"the tokenizer produced id {int(tokens.max())}, outside the model's vocabulary of "
                         f"{vocab_size}: tokenizer and model do not match")


def _bos_note(tokenizer: Tokenizer | None) -> str:
    return "" if bos_id(tokenizer) is None else f", starting with BOS (id {bos_id(tokenizer)})"


def make_probe(
    kind: ProbeKind,
    length: int | None,
    tokenizer: Tokenizer | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
    batch: int = 1,
    block_len: int | None = None,
    text: str | None = None,
) -> ProbeInput:
    """Build one probe input of ``kind``.

    - ``random`` and ``repeated`` need ``vocab_size``; ``repeated`` uses ``block_len``
      (default ``length // 2``: two repeats) and cuts the last repeat to fit ``length``.
    - ``natural`` needs a tokenizer or, without one, ``vocab_size`` (byte-level fallback).
    - ``user`` needs ``text``; ``length``, when given, keeps at most that many tokens; the
      batch is always 1.
    When both a tokenizer and ``vocab_size`` are given, ids outside the vocabulary are an error.
    """
    if kind == "user":
        if text is None:
            raise InputError("a user probe needs text")
        if length is not None:
            check_sizes(length=length)
        tokens = text_tokens(tokenizer, text, vocab_size, max_tokens=length)
        check_ids_fit(tokens, vocab_size)
        source = "tokenizer" if tokenizer is not None else "UTF-8 bytes mod vocab (no tokenizer)"
        return ProbeInput(
            name=f"user-T{tokens.shape[1]}",
            kind=kind,
            tokens=tokens,
            seed=None,
            description=f"user text, {plural(tokens.shape[1], 'token')} ({source}){_bos_note(tokenizer)}",
        )
    if length is None:
        raise InputError(f"a {kind} probe needs a length")
    check_sizes(length=length, batch=batch)
    if kind == "random":
        if vocab_size is None:
            raise InputError("a random probe needs vocab_size")
        return ProbeInput(
            name=f"random-T{length}-s{seed}",
            kind=kind,
            tokens=random_tokens(vocab_size, length, batch, seed),
            seed=seed,
            description=f"{length} uniform random token ids, seed {seed}",
        )
    if kind == "repeated":
        if vocab_size is None:
            raise InputError("a repeated probe needs vocab_size")
        block_len = max(1, length // 2) if block_len is None else block_len
        check_sizes(block_len=block_len)
        n_repeats = -(-length // block_len)
        tokens = repeated_random_blocks(vocab_size, block_len, n_repeats, batch, seed)
        return ProbeInput(
            name=f"repeated-b{block_len}-T{length}-s{seed}",
            kind=kind,
            tokens=tokens[:, :length],
            seed=seed,
            description=(
                f"a random block of {block_len} tokens repeated to {length} tokens, seed {seed}; "
                f"a model that uses its context has low loss from position {block_len} on"
            ),
            block_len=block_len,
        )
    if kind == "natural":
        tokens = natural_text_tokens(tokenizer, length, batch, seed, vocab_size=vocab_size)
        check_ids_fit(tokens, vocab_size)
        source = "tokenizer" if tokenizer is not None else "UTF-8 bytes mod vocab (no tokenizer)"
        return ProbeInput(
            name=f"natural-T{length}-s{seed}",
            kind=kind,
            tokens=tokens,
            seed=seed,
            description=f"{length} tokens of the shipped corpus ({source}){_bos_note(tokenizer)}, seed {seed}",
        )
    raise InputError(f"unknown probe kind {kind!r}: choose random, repeated, natural or user")
