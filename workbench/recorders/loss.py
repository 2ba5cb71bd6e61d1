"""Loss recorder: next-token cross-entropy at every position, computed in chunks.

The logits of a long input are T x vocab x 4 bytes (1.6 GB for SmolLM2 at 8192 tokens), so the
loss is computed from the final hidden state ``chunk`` positions at a time and the logits are
never held whole. ``loss[b, t]`` is -log p(token[t + 1] | tokens[: t + 1]), in nats.
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
def chunked_loss(
    hidden: torch.Tensor, tokens: torch.Tensor, unembed: torch.nn.Module, chunk: int = 512,
    slice_rows: int = 16,
) -> torch.Tensor:
    """Next-token loss ``[B, T-1]`` from the final hidden state ``[B, T, d]`` and ``tokens [B, T]``.

    Unembedded ``chunk`` positions per matrix product; normalised ``slice_rows`` positions at a
    time, so those passes read cache rather than memory.
    """
    B, T, _ = hidden.shape
    out = torch.empty(B, max(T - 1, 0))
    targets = tokens.to(hidden.device)
    for start in range(0, T - 1, chunk):
        stop = min(start + chunk, T - 1)
        logits = unembed(hidden[:, start:stop]).float()  # (B, c, V)
        target = logits.gather(-1, targets[:, start + 1 : stop + 1, None]).squeeze(-1)  # (B, c)
        lse = torch.cat([log_normaliser(logits[:, i : i + slice_rows])
                         for i in range(0, stop - start, slice_rows)], dim=1)
        out[:, start:stop] = (lse - target).cpu()
    return out


class LossRecorder:
    """Captures the tokens and the final hidden state; computes the loss after the forward."""

    def __init__(self, model: Any, chunk: int = 512) -> None:
        self.model = model
        self.chunk = chunk
        self._tokens: torch.Tensor | None = None
        self._hidden: torch.Tensor | None = None

    def hooks(self) -> list[tuple[str, Any]]:
        return [("hook_tokens", self._capture_tokens), ("hook_final", self._capture_hidden)]

    def _capture_tokens(self, tokens: torch.Tensor, point: Any) -> None:
        self._tokens = tokens.detach()

    def _capture_hidden(self, hidden: torch.Tensor, point: Any) -> None:
        self._hidden = hidden.detach()

    def finish(self) -> LossRecord | None:
        if self._hidden is None or self._tokens is None:
            return None
        loss = chunked_loss(self._hidden, self._tokens, self.model.unembed, self.chunk)
        self._hidden = None
        return LossRecord(loss)
