"""Length sweep: per-position loss at lengths around the context a model claims.

Two kinds of probe, each run at several seeds so the spread between them is known:

* ``natural``: windows of the shipped public-domain corpus (or its bytes, for models without a
  tokenizer), one seeded offset per seed;
* ``copy``: consecutive blocks of the same text, each written twice in a row (``A A B B ...``,
  :func:`workbench.measurements.copy_probe.copied_blocks`; random ids for models without a tokenizer): every second copy
  is predictable from the same short distance back, wherever it sits. Only those targets count.
  Unlike one block repeated to fill the probe, no block is seen more than twice, so a real
  model stays in distribution (its in-context loss is low and steady). Measured on SmolLM2-135M
  (VALIDATION.md): copies of random ids drift from 3.6 to 5-6 nats over 2,048 tokens with a
  spread of 1-2 nats between seeds; copies of text stay low and steady.

A causal model's loss at position t does not depend on later tokens, so the sweep runs one
forward per kind and seed at the longest length the model takes and reads the shorter
probes off its prefix. Dynamic NTK scaling grows RoPE's base with the forward's length, so
there every length gets its own forward. A length the model cannot take (learned positions
past their table, or any crash) is recorded with its error instead of ending the sweep; an
out-of-memory error is not caught (the pipeline turns it into a message naming what fits).

When the config declares RoPE scaling, the sweep also runs the trained context with the
scaling switched off (same weights): a scaling that was never fine-tuned shows as a model that
copes without it and not with it.

Each forward runs on ``model.hidden`` with a chunked loss: a long probe never holds its full
``[T, vocab]`` logits. Shape legend: S seeds, B batch rows, T positions.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.measurements.copy_probe import (
    copied_blocks,
    copied_random_blocks,
    copy_stream_length,
    copy_targets,
)
from workbench.model.positions import rope_inv_freq
from workbench.recorders.attention import _nan_to_none, bucket
from workbench.recorders.loss import chunked_loss

KINDS = ("natural", "copy")
# A crash of the forward at some length is a finding, not the end of the sweep; running out of
# memory is the host's limit, not the model's, and is left to the caller.
_FORWARD_ERRORS = (IndexError, RuntimeError, ValueError)


@dataclass
class LengthProbe:
    """The per-position loss of one kind of probe at one length, for every seed."""

    kind: str  # "natural" | "copy"
    length: int
    seeds: tuple[int, ...] = ()
    loss_by_seed: torch.Tensor | None = None  # [S, T-1] batch-mean next-token loss, nats
    predictable: torch.Tensor | None = None  # [T-1] bool: targets the probe makes predictable
    block_len: int | None = None  # copy probes: the copy distance
    error: str | None = None
    prefix_of: int | None = None  # read off the forward of this longer probe
    rope_scaling: bool = True  # False: run with the declared RoPE scaling switched off

    @property
    def loss(self) -> torch.Tensor | None:
        """[T-1] mean over seeds; NaN at targets the probe does not make predictable."""
        if self.loss_by_seed is None:
            return None
        mean = self.loss_by_seed.float().mean(dim=0)
        return torch.where(self.predictable, mean, torch.full_like(mean, math.nan))

    def first_nonfinite(self) -> int | None:
        """The first position whose loss is NaN or infinite in any seed (None: all finite)."""
        if self.loss_by_seed is None:
            return None
        bad = ~torch.isfinite(self.loss_by_seed).all(dim=0) & self.predictable
        return int(bad.nonzero()[0, 0]) + 1 if bool(bad.any()) else None

    def prefix(self, length: int) -> LengthProbe:
        """This probe's first ``length`` tokens, as a probe of its own (causal models only)."""
        assert self.loss_by_seed is not None and self.predictable is not None
        return LengthProbe(kind=self.kind, length=length, seeds=self.seeds,
                           loss_by_seed=self.loss_by_seed[:, : length - 1],
                           predictable=self.predictable[: length - 1], block_len=self.block_len,
                           prefix_of=self.length, rope_scaling=self.rope_scaling)


@dataclass
class LengthRecord:
    """Everything the length analyzer judges: the claim, the references and the curves."""

    boundary: int  # the context the model claims (after any RoPE scaling: claimed_context)
    trained_context: int  # before RoPE scaling (== boundary without scaling)
    positions: str  # the position scheme: rope, alibi, learned, ...
    vocab_size: int  # chance loss is log(vocab_size)
    rope_scaling: str | None = None  # the declared scaling kind, if any
    rope_factor: float | None = None
    probes: list[LengthProbe] = field(default_factory=list)
    unscaled: list[LengthProbe] = field(default_factory=list)  # scaling off, at the trained context
    skipped_lengths: list[int] = field(default_factory=list)  # above the run's longest probe

    @property
    def chance_loss(self) -> float:
        """The loss of a uniform guess over the vocabulary, nats."""
        return math.log(self.vocab_size)

    def to_dict(self, max_points: int = 256) -> dict[str, Any]:
        probes = []
        for probe in self.probes:
            entry: dict[str, Any] = {"kind": probe.kind, "length": probe.length, "block_len": probe.block_len,
                                     "seeds": list(probe.seeds), "error": probe.error, "loss_by_position": None,
                                     "bucket_size": 1, "prefix_of": probe.prefix_of}
            loss = probe.loss
            if loss is not None:
                n = loss.shape[-1]
                entry["loss_by_position"] = _nan_to_none(bucket(loss, max_points))
                entry["bucket_size"] = -(-n // max_points) if n > max_points else 1
            probes.append(entry)
        return {"trained_context": self.trained_context, "max_positions": self.boundary,
                "positions": self.positions, "chance_loss": round(self.chance_loss, 4),
                "rope_scaling": self.rope_scaling, "probes": probes, "skipped_lengths": self.skipped_lengths}


def claimed_context(config: Any) -> tuple[int, int]:
    """(claimed, trained) context of ``config``, in tokens.

    Without RoPE scaling both are ``max_positions``. With it, the claim is the scaling factor x
    the original length where the config gives the original (Qwen2.5 writes
    max_position_embeddings = the original 32,768 and a YaRN factor of 4: it claims 131,072),
    and never less than ``max_positions`` (Llama 3.1 writes 131,072 with a factor of 8 over
    8,192). Without an original length, linear and YaRN scaling treat ``max_positions`` as the
    stretched context (trained at max_positions / factor) and dynamic NTK as the trained one
    (it stretches past it, to factor x max_positions).
    """
    scaling = config.rope_scaling if config.positions == "rope" else None
    length = config.max_positions
    if scaling is None or scaling.factor <= 1:
        return length, length
    if scaling.original_max_positions:
        original = scaling.original_max_positions
        return max(length, int(round(scaling.factor * original))), original
    if scaling.kind == "dynamic":
        return int(round(scaling.factor * length)), length
    return length, max(1, int(round(length / scaling.factor)))


def sweep_lengths(boundary: int, factors: Sequence[float], extra: Sequence[int], cap: int,
                  requested: int | None = None) -> tuple[list[int], list[int]]:
    """(lengths to run, lengths skipped because they are too long), sorted and unique.

    Lengths are ``factors`` x ``boundary`` and ``extra``, up to the profile's ``cap``; a length
    a user asked for (``--tokens N``) replaces the cap and is always the longest probe."""
    wanted = sorted({max(8, int(round(f * boundary))) for f in factors} | {int(x) for x in extra if x >= 8})
    longest = cap if requested is None else requested
    run = {n for n in wanted if n <= longest} | ({requested} if requested is not None else set())
    return sorted(run), [n for n in wanted if n > longest]


def copy_block_len(boundary: int, block_len: int) -> int:
    """The copy distance: the profile's block, at most a quarter of the claim (so a model with a
    short claim sees pairs inside it), and at least 2."""
    return max(2, min(block_len, boundary // 4))


@contextlib.contextmanager
def rope_scaling_off(model: Any) -> Iterator[None]:
    """The same weights with the declared RoPE scaling switched off; restored on exit."""
    config = model.config
    saved = (model.rope_inv_freq, model.rope_attention_factor)
    plain = config.replace(rope_scaling=None)
    inv_freq, factor = rope_inv_freq(plain)
    model.config = plain
    model.rope_inv_freq, model.rope_attention_factor = inv_freq.to(saved[0].device), factor
    try:
        yield
    finally:
        model.config = config
        model.rope_inv_freq, model.rope_attention_factor = saved


Maker = Callable[[int, int], torch.Tensor]  # (length, seed) -> [B, length] tokens


def _forward_losses(model: Any, make: Maker, length: int, seeds: Sequence[int]) -> torch.Tensor:
    """[S, T-1] batch-mean loss of ``make(length, seed)`` for each seed."""
    rows = []
    for seed in seeds:
        tokens = make(length, seed)
        hidden = model.hidden(tokens)  # [B, T, d_model]
        rows.append(chunked_loss(hidden, tokens.to(hidden.device), model.unembed).mean(dim=0))
        del hidden
    return torch.stack(rows)


def _run_kind(model: Any, kind: str, make: Maker, lengths: list[int], seeds: Sequence[int],
              predictable: Callable[[int], torch.Tensor], block_len: int | None, *, prefixes: bool,
              progress: Callable[[str], None] | None, scaled: bool = True) -> list[LengthProbe]:
    """One kind's probes, longest first: a forward at each length no longer probe covers."""
    probes: dict[int, LengthProbe] = {}
    covering: LengthProbe | None = None
    for length in sorted(lengths, reverse=True):
        if prefixes and covering is not None:
            probes[length] = covering.prefix(length)
            continue
        if progress is not None:
            progress(f"{kind} probe, {length:,} tokens, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
        probe = LengthProbe(kind=kind, length=length, seeds=tuple(seeds), block_len=block_len,
                            rope_scaling=scaled)
        try:
            probe.loss_by_seed = _forward_losses(model, make, length, seeds)
            probe.predictable = predictable(length)
            covering = probe
        except torch.OutOfMemoryError:
            raise
        except _FORWARD_ERRORS as error:
            probe.error = f"{type(error).__name__}: {error}".splitlines()[0]
        probes[length] = probe
    return [probes[n] for n in sorted(probes)]


@torch.no_grad()
def run_length_sweep(
    model: Any,
    lengths: list[int],
    *,
    natural: Maker | None,
    vocab_size: int,
    block_len: int,
    seeds: Sequence[int] = (0, 1, 2),
    batch: int = 1,
    copy_text: bool = True,
    skipped: list[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> LengthRecord:
    """Loss per position for each length, probe kind and seed.

    ``natural(length, seed)`` returns ``[batch, length]`` tokens of text (None: no natural
    probes); the copy probe copies that text (``copy_text``, for models with a tokenizer) or
    random ids below ``vocab_size`` (synthetic vocabularies), at distance :func:`copy_block_len`."""
    config = model.config
    scaling = config.rope_scaling if config.positions == "rope" else None
    claimed, trained = claimed_context(config)
    record = LengthRecord(boundary=claimed, trained_context=trained,
                          positions=config.positions, vocab_size=vocab_size,
                          rope_scaling=None if scaling is None else scaling.kind,
                          rope_factor=None if scaling is None else scaling.factor,
                          skipped_lengths=list(skipped or []))
    distance = copy_block_len(claimed, block_len)

    def copy(length: int, seed: int) -> torch.Tensor:
        if natural is None or not copy_text:
            return copied_random_blocks(vocab_size, distance, length, batch=batch, seed=seed)
        return copied_blocks(natural(copy_stream_length(length, distance), seed), distance, length)

    kinds: list[tuple[str, Maker, Callable[[int], torch.Tensor], int | None]] = []
    if natural is not None:
        kinds.append(("natural", natural, lambda n: torch.ones(n - 1, dtype=torch.bool), None))
    kinds.append(("copy", copy, lambda n: copy_targets(n, distance), distance))
    prefixes = scaling is None or scaling.kind != "dynamic"
    for kind, make, predictable, block in kinds:
        record.probes += _run_kind(model, kind, make, lengths, seeds, predictable, block,
                                   prefixes=prefixes, progress=progress)
    if scaling is not None:
        reference = min(record.trained_context, max(lengths, default=0))
        if reference >= 8:
            with rope_scaling_off(model):
                for kind, make, predictable, block in kinds:
                    record.unscaled += _run_kind(model, kind, make, [reference], seeds, predictable, block,
                                                 prefixes=True, progress=progress, scaled=False)
    return record
