"""Soft-capping (Gemma 2): ``cap * tanh(x / cap)`` squashes logits smoothly into ``(-cap, cap)``.

Gemma 2 caps attention scores (after the scale, before the mask and softmax) at 50 and the
output logits at 30. Near zero the cap is the identity; it bites only on large logits.
"""

from __future__ import annotations

import torch
from torch import nn


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(x / cap)``, elementwise, in x's dtype (the order Gemma 2's code uses)."""
    return torch.tanh(x / cap) * cap


class CappedUnembed(nn.Linear):
    """The unembedding followed by the final-logit soft-cap.

    Callers that unembed the final residual themselves (chunked losses, the logit lens) call
    ``model.unembed(h)`` and so see the capped logits the model predicts with.
    """

    def __init__(self, d_model: int, vocab_size: int, cap: float) -> None:
        super().__init__(d_model, vocab_size, bias=False)
        self.cap = cap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softcap(super().forward(x), self.cap)
