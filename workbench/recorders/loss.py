"""Loss recorder: next-token cross-entropy at every position, computed in chunks.

When the forward computes the logits anyway (``model(tokens)``), the loss is read from them as they
pass ``hook_logits``: no second unembedding. After ``model.hidden(tokens)`` (what long inputs use:
their logits are T x vocab x 4 bytes, 1.6 GB for SmolLM2 at 8192 tokens) it is computed from the
final hidden state ``chunk`` positions at a time and the logits are never held whole.
``loss[b, t]`` is -log p(token[t + 1] | tokens[: t + 1]), in nats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workbench.recorders.attention import _nan_to_none, bucket
from workbench.recorders.residual import log_normaliser


@dataclass
class LossRecord:
    """``loss [B, T-1]`` in nats; ``mean`` over all positions."""

    loss: torch.Tensor

    @property
    def mean(self) -> float:
        return float(self.loss.mean())

    @property
    def by_position(self) -> torch.Tensor:
        """``[T-1]``: loss at each position, averaged over the batch."""
        return self.loss.mean(dim=0)

    def to_dict(self, max_positions: int = 512) -> dict[str, Any]:
        return {
            "mean": round(self.mean, 6),
            "n_positions": int(self.loss.shape[1]),
            "by_position": _nan_to_none(bucket(self.by_position, max_positions)),
        }


@torch.no_grad()
def logits_loss(logits: torch.Tensor, tokens: torch.Tensor, slice_rows: int = 16) -> torch.Tensor:
    """Next-token loss ``[B, c]`` of logits ``[B, c, V]`` whose targets are ``tokens [B, c]``.

    Normalised ``slice_rows`` positions at a time, so each pass reads cache rather than memory.
    """
    target = logits.gather(-1, tokens.to(logits.device)[..., None]).squeeze(-1).float()  # (B, c)
    lse = torch.cat([log_normaliser(logits[:, i : i + slice_rows].float())
                     for i in range(0, logits.shape[1], slice_rows)], dim=1)
    return (lse - target).cpu()


@torch.no_grad()
def chunked_loss(
    hidden: torch.Tensor, tokens: torch.Tensor, unembed: torch.nn.Module, chunk: int = 512,
    slice_rows: int = 16,
) -> torch.Tensor:
    """Next-token loss ``[B, T-1]`` from the final hidden state ``[B, T, d]`` and ``tokens [B, T]``.

    Unembedded ``chunk`` positions per matrix product (see :func:`logits_loss`).
    """
    B, T, _ = hidden.shape
    out = torch.empty(B, max(T - 1, 0))
    for start in range(0, T - 1, chunk):
        stop = min(start + chunk, T - 1)
        logits = unembed(hidden[:, start:stop]).float()  # (B, c, V)
        out[:, start:stop] = logits_loss(logits, tokens[:, start + 1 : stop + 1], slice_rows)
    return out


class LossRecorder:
    """Reads the loss off the logits when the forward makes them; otherwise keeps the final
    hidden state and unembeds it in chunks after the forward."""

    def __init__(self, model: Any, chunk: int = 512) -> None:
        self.model = model
        self.chunk = chunk
        self._tokens: torch.Tensor | None = None
        self._hidden: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None

    def hooks(self) -> list[tuple[str, Any]]:
        return [("hook_tokens", self._capture_tokens), ("hook_final", self._capture_hidden),
                ("hook_logits", self._capture_logits)]

    def _capture_tokens(self, tokens: torch.Tensor, point: Any) -> None:
        self._tokens = tokens.detach()

    def _capture_hidden(self, hidden: torch.Tensor, point: Any) -> None:
        self._hidden, self._loss = hidden.detach(), None

    def _capture_logits(self, logits: torch.Tensor, point: Any) -> None:
        if self._tokens is not None:
            self._loss = logits_loss(logits.detach()[:, :-1], self._tokens[:, 1:])
            self._hidden = None

    def finish(self) -> LossRecord | None:
        if self._loss is None and self._hidden is not None and self._tokens is not None:
            self._loss = chunked_loss(self._hidden, self._tokens, self.model.unembed, self.chunk)
        self._hidden = None
        return LossRecord(self._loss) if self._loss is not None else None
