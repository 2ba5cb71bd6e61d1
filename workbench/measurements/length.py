"""Length sweep: per-position loss at lengths around the model's context, on two kinds of probe.

* ``natural``: the shipped public-domain corpus (or bytes of it, for models without a tokenizer);
* ``repeated``: a random block of ``block_len`` tokens repeated to fill the length. A model that
  uses its context predicts every repeat after the first; the loss on those positions shows
  whether it still can at positions it was never trained on.

Each forward runs on ``model.hidden`` with a chunked loss, so a long probe never holds its full
logits. A length the model cannot take (learned positions past their table) is recorded with its
error instead of crashing the sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.inputs import repeated_random_blocks
from workbench.recorders.attention import _nan_to_none, bucket
from workbench.recorders.loss import chunked_loss


@dataclass
class LengthProbe:
    kind: str  # "natural" | "repeated"
    length: int
    loss: torch.Tensor | None = None  # (T-1,) batch-mean loss at each position, nats
    block_len: int | None = None  # repeated probes: positions >= block_len - 1 are predictable
    error: str | None = None


@dataclass
class LengthRecord:
    boundary: int  # the context the model claims (max_positions, after any RoPE scaling)
    trained_context: int  # before RoPE scaling
    positions: str
    probes: list[LengthProbe] = field(default_factory=list)
    skipped_lengths: list[int] = field(default_factory=list)  # above the profile's token cap

    def to_dict(self, max_points: int = 256) -> dict[str, Any]:
        probes = []
        for probe in self.probes:
            entry: dict[str, Any] = {"kind": probe.kind, "length": probe.length, "block_len": probe.block_len,
                                     "error": probe.error, "loss_by_position": None, "bucket_size": 1}
            if probe.loss is not None:
                n = probe.loss.shape[-1]
                entry["loss_by_position"] = _nan_to_none(bucket(probe.loss, max_points))
                entry["bucket_size"] = -(-n // max_points) if n > max_points else 1
            probes.append(entry)
        return {"trained_context": self.trained_context, "max_positions": self.boundary,
                "positions": self.positions, "probes": probes, "skipped_lengths": self.skipped_lengths}


def sweep_lengths(boundary: int, factors: list[float], extra: list[int], cap: int) -> tuple[list[int], list[int]]:
    """(lengths to run, lengths skipped because they exceed ``cap``), sorted and unique."""
    wanted = sorted({max(8, int(round(f * boundary))) for f in factors} | {int(x) for x in extra if x >= 8})
    return [n for n in wanted if n <= cap], [n for n in wanted if n > cap]


@torch.no_grad()
def run_length_sweep(
    model: Any,
    lengths: list[int],
    *,
    natural: Callable[[int, int], torch.Tensor] | None,
    vocab_size: int,
    block_len: int,
    seed: int = 0,
    batch: int = 1,
    skipped: list[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> LengthRecord:
    """Loss per position for each length and probe kind. ``natural(length, seed)`` returns
    ``[batch, length]`` tokens of text (None: skip natural probes)."""
    config = model.config
    record = LengthRecord(boundary=config.max_positions, trained_context=config.trained_context,
                          positions=config.positions, skipped_lengths=list(skipped or []))
    for length in lengths:
        kinds: list[tuple[str, Callable[[], torch.Tensor], int | None]] = []
        if natural is not None:
            kinds.append(("natural", lambda n=length: natural(n, seed), None))
        b = max(2, min(block_len, length // 2))
        repeats = -(-length // b)
        kinds.append((
            "repeated",
            lambda n=length, b=b, r=repeats: repeated_random_blocks(vocab_size, b, r, batch=batch, seed=seed)[:, :n],
            b,
        ))
        for kind, make, block in kinds:
            if progress is not None:
                progress(f"{kind} probe, {length} tokens")
            probe = LengthProbe(kind=kind, length=length, block_len=block)
            try:
                tokens = make()
                hidden = model.hidden(tokens)
                probe.loss = chunked_loss(hidden, tokens, model.unembed).mean(dim=0)
                del hidden
            except IndexError as error:  # learned positions past the table
                probe.error = str(error)
            record.probes.append(probe)
    return record
