"""The zoo's synthetic training tasks: copy (looped and copied once), topics, corpus text, and mixtures.

Shape legend: B batch rows, T positions, V vocab, K topic size."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from workbench.inputs import encode_text, load_corpus_text

TRAINED_CONTEXT = 64


VOCAB_SIZE = 128


@dataclass(frozen=True)
class CopyTask:
    """Repeated random blocks: a block of ``b`` random ids repeated to ``context`` tokens.

    ``b`` is drawn once per batch, uniformly in ``[min_block, max_block]``, so no fixed copy
    distance pays off: the model must learn to copy by content (previous-token and induction
    heads). Every position from ``b`` on is predictable, and only those carry loss.
    """

    context: int = TRAINED_CONTEXT
    min_block: int = 8
    max_block: int = 32
    batch: int = 16

    def sample(self, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """One batch ``[B, T]`` int64 and its block length (the first position with loss)."""
        block_len = int(torch.randint(self.min_block, self.max_block + 1, (), generator=generator))
        block_BT = torch.randint(0, vocab_size, (self.batch, block_len), generator=generator)
        return block_BT.repeat(1, -(-self.context // block_len))[:, : self.context], block_len


@dataclass(frozen=True)
class PairCopyTask:
    """Copies at a bounded distance: fresh random blocks of ``b`` ids, each written twice in a
    row (``A A B B ...``), as the length sweep's copy probe writes them; ``b`` is drawn per batch
    in ``[min_block, max_block]``. Loss from position ``b`` on (first copies of later blocks are
    unpredictable noise the model learns to spread its guess over)."""

    context: int = TRAINED_CONTEXT
    min_block: int = 8
    max_block: int = 32
    batch: int = 16

    def sample(self, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """One batch ``[B, T]`` int64 and its block length (the first position with loss)."""
        block_len = int(torch.randint(self.min_block, self.max_block + 1, (), generator=generator))
        n_pairs = -(-self.context // (2 * block_len))
        ids = torch.randint(0, vocab_size, (self.batch, n_pairs, 1, block_len), generator=generator)
        pairs = ids.expand(self.batch, n_pairs, 2, block_len).reshape(self.batch, -1)
        return pairs[:, : self.context], block_len


@dataclass(frozen=True)
class TopicTask:
    """Bags of tokens: each row draws a "topic" of ``topic_size`` distinct ids and samples every
    token uniformly from it.

    The best guess for the next token is the spread of ids seen so far, which attention gets by
    averaging over the context: a healthy model's heads attend broadly (no one-hot pattern is
    the right answer), and a saturated model can fetch only one earlier token. Loss from
    position 1 on.
    """

    context: int = TRAINED_CONTEXT
    topic_size: int = 4
    batch: int = 16
    id_high: int | None = None  # topics drawn from ids [0, id_high); None: the whole vocabulary

    def sample(self, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """One batch ``[B, T]`` int64 and the first position that carries loss (1)."""
        scores_BV = torch.rand(self.batch, self.id_high or vocab_size, generator=generator)
        topics_BK = scores_BV.argsort(dim=-1)[:, : self.topic_size]
        picks_BT = torch.randint(0, self.topic_size, (self.batch, self.context), generator=generator)
        return topics_BK.gather(1, picks_BT), 1


@functools.cache
def _corpus_ids(vocab_size: int) -> torch.Tensor:
    """The shipped corpus as UTF-8 bytes mod ``vocab_size`` (as probes read it without a tokenizer)."""
    return torch.tensor(encode_text(None, load_corpus_text(), vocab_size), dtype=torch.long)


@dataclass(frozen=True)
class TextTask:
    """Next-token prediction on windows of the shipped corpus, read as bytes mod the vocabulary.

    The same text, read the same way, is the analyzers' main probe for models without a
    tokenizer: a router balanced on it is balanced where it is measured. Loss from position 1 on.
    """

    context: int = TRAINED_CONTEXT
    batch: int = 16

    def sample(self, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """One batch ``[B, T]`` int64 and the first position that carries loss (1)."""
        ids = _corpus_ids(vocab_size)
        starts_B = torch.randint(0, ids.numel() - self.context + 1, (self.batch,), generator=generator)
        return torch.stack([ids[start : start + self.context] for start in starts_B.tolist()]), 1


@dataclass(frozen=True)
class MixedTask:
    """Each batch drawn from one of ``parts``, chosen uniformly at random."""

    parts: tuple[CopyTask | PairCopyTask | TopicTask | TextTask, ...]

    def sample(self, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        part = self.parts[int(torch.randint(len(self.parts), (), generator=generator))]
        return part.sample(vocab_size, generator)


@dataclass(frozen=True)
class RowMixTask:
    """Every batch holds rows of each of ``parts`` (each part's own batch size), so a balancing
    loss balances experts over the mixture, not within each part."""

    parts: tuple[TopicTask | TextTask, ...]

    def sample(self, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        batches = [part.sample(vocab_size, generator) for part in self.parts]
        return torch.cat([rows for rows, _ in batches]), max(first for _, first in batches)


Task = CopyTask | PairCopyTask | TopicTask | TextTask | MixedTask | RowMixTask
# The length members copy both ways: one block looped (fast to learn) and blocks copied once (what
# the length sweep's copy probe writes).
_COPY = MixedTask((CopyTask(), PairCopyTask()))
# Prose (bytes 10 and 32-126) and topics over the ids below 32 that prose never uses (but 10, 13):
# two domains the router can tell apart from the first token on.
DOMAIN_IDS = 32
_PROSE_AND_LOW_TOPICS = RowMixTask((TextTask(batch=8), TopicTask(batch=8, id_high=DOMAIN_IDS)))


# The MoE pair sees natural text (the analyzers' main probe) and uniform ids (random probes), so
# the balanced twin is balanced on both.
_TEXT_AND_TOPICS = MixedTask((TextTask(), TopicTask()))
