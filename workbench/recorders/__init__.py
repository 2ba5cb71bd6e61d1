"""Recorders: what the workbench sees with.

``record(model, ...)`` is a context manager; inside it the model runs normally and returns the
same logits, afterwards the records are on the returned :class:`Recording` and nothing stays
attached::

    with workbench.record(model, attention=True, residual=True, routing=True, loss=True) as rec:
        model.hidden(tokens)          # or model(tokens)
    rec.attention.entropy_norm        # [layers, heads, T]
    rec.loss.by_position              # [T-1]

One ``record`` block describes one forward: attention, residual and loss records hold the last
forward made inside it; routing counts add up over all of them. Blocks that record attention do
not nest (the inner one raises ``RuntimeError``); other recorders stack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from workbench.model.hooks import hooks
from workbench.recorders.attention import AttentionRecord, AttentionRecorder, PatternRequest
from workbench.recorders.loss import LossRecord, LossRecorder
from workbench.recorders.residual import ResidualRecord, ResidualRecorder
from workbench.recorders.routing import RoutingRecord, RoutingRecorder

__all__ = [
    "AttentionRecord",
    "LossRecord",
    "PatternRequest",
    "Recording",
    "ResidualRecord",
    "RoutingRecord",
    "record",
]


@dataclass
class Recording:
    """The records of one ``record`` block (None for what was not asked or did not run)."""

    attention: AttentionRecord | None = None
    residual: ResidualRecord | None = None
    routing: RoutingRecord | None = None
    loss: LossRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            name: (getattr(self, name).to_dict() if getattr(self, name) is not None else None)
            for name in ("attention", "residual", "routing", "loss")
        }


@contextlib.contextmanager
def record(
    model: Any,
    *,
    attention: bool = False,
    residual: bool = False,
    routing: bool = False,
    loss: bool = False,
    patterns: list[PatternRequest] | None = None,
    pattern_budget_bytes: int = 32 * 2**20,
    lens: bool = True,
    lens_positions: int = 32,
) -> Iterator[Recording]:
    """Record the forward(s) run inside the block; see the module docstring.

    ``patterns``: the (layer, head, query range) whose full attention pattern to keep, within
    ``pattern_budget_bytes``. ``lens``/``lens_positions``: the logit lens and at how many evenly
    spaced positions to decode every layer. The loss and the lens read the model's own logits
    when the block calls ``model(tokens)``; after ``model.hidden(tokens)`` (long inputs) they
    unembed what they need in chunks.
    """
    recording = Recording()
    attention_recorder = (
        AttentionRecorder(model, patterns, pattern_budget_bytes) if attention else None
    )
    residual_recorder = ResidualRecorder(model, lens, lens_positions) if residual else None
    routing_recorder = RoutingRecorder(model) if routing else None
    loss_recorder = LossRecorder(model) if loss else None
    fwd_hooks = []
    for recorder in (residual_recorder, routing_recorder, loss_recorder):
        if recorder is not None:
            fwd_hooks.extend(recorder.hooks())
    options = attention_recorder.options() if attention_recorder is not None else {}
    with model.attention_options(**options), hooks(model, fwd_hooks):
        yield recording
    if attention_recorder is not None:
        recording.attention = attention_recorder.finish()
    if residual_recorder is not None:
        recording.residual = residual_recorder.finish()
    if routing_recorder is not None:
        recording.routing = routing_recorder.finish()
    if loss_recorder is not None:
        recording.loss = loss_recorder.finish()
