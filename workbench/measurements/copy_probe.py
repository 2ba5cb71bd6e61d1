"""The length sweep's copy probe: blocks each written twice in a row, copied at a bounded distance.

``A A B B C C ...``: every position in a second copy holds the id ``block_len`` positions back,
so a model that copies from its context predicts it wherever it sits, always from the same short
distance; no block appears more than twice. Heavy repetition of one block (``inputs.repeated``)
throws real models out of distribution at some lengths (SmolLM2: 0.9 / 14.7 / 1.1 nats at 512 /
2,048 / 4,096 tokens); copies of text stay low and steady (VALIDATION.md).

Shape legend: B batch rows, T positions. Token tensors are int64 ``[B, T]``.
"""

from __future__ import annotations

import torch

from workbench.errors import InputError
from workbench.inputs import check_sizes, random_tokens


def copy_stream_length(length: int, block_len: int) -> int:
    """How many ids :func:`copied_blocks` reads per row to write ``length`` tokens."""
    return -(-length // (2 * block_len)) * block_len


def copied_blocks(stream: torch.Tensor, block_len: int, length: int) -> torch.Tensor:
    """Consecutive blocks of ``stream [B, n]``, each written twice in a row (``A A B B C C ...``),
    cut to ``length``: shape ``[B, length]``; ``stream`` needs ``ceil(length / (2 * block_len))
    * block_len`` ids at least.

    The copy probe at a bounded distance: every position in a second copy holds the id
    ``block_len`` positions back, so a model that copies from its context predicts it wherever
    it sits, always from the same short distance. No block appears more than twice, so the
    input never becomes the long loop of one block that throws real models out of
    distribution. :func:`copy_targets` says which positions are predictable.
    """
    check_sizes(block_len=block_len, length=length)
    needed = copy_stream_length(length, block_len)
    n_pairs = needed // block_len
    batch, available = stream.shape
    if available < needed:
        raise InputError(f"copied_blocks needs {needed} ids per row, got {available}")
    blocks = stream[:, :needed].reshape(batch, n_pairs, 1, block_len)
    return blocks.expand(batch, n_pairs, 2, block_len).reshape(batch, -1)[:, :length].contiguous()


def copied_random_blocks(
    vocab_size: int,
    block_len: int,
    length: int,
    batch: int = 1,
    seed: int = 0,
    low: int | None = None,
    high: int | None = None,
) -> torch.Tensor:
    """:func:`copied_blocks` of fresh random ids (drawn as in :func:`workbench.inputs.random_tokens`), shape
    ``[batch, length]``. Random ids suit models trained on them; a real model copies text more
    steadily than a stream of random vocabulary entries (the sweep copies corpus text for them)."""
    check_sizes(block_len=block_len, length=length, batch=batch)
    return copied_blocks(random_tokens(vocab_size, copy_stream_length(length, block_len), batch, seed, low, high),
                         block_len, length)


def copy_targets(length: int, block_len: int) -> torch.Tensor:
    """Which next-token targets of :func:`copied_random_blocks` are predictable: a bool
    ``[length - 1]`` where entry ``t`` says whether token ``t + 1`` lies in a second copy, past
    its first id.

    The first id of a second copy follows the last id of a fresh first copy, which nothing in the
    context has preceded before: a model that copies by content (an induction head) cannot know
    the copy starts there. Only the ids after it continue a sequence seen ``block_len`` back."""
    check_sizes(block_len=block_len, length=length)
    position = torch.arange(1, length)
    return (position % (2 * block_len)) > block_len
