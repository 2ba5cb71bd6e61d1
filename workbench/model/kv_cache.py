"""The hooked decoder's KV cache: keys and values of past tokens, per layer."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of past tokens, per layer: ``(B, K, S, D)`` each, appended in place."""

    def __init__(self, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        """Number of tokens cached (0 when empty)."""
        first = self.keys[0]
        return 0 if first is None else first.shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        past_k, past_v = self.keys[layer], self.values[layer]
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def nbytes(self) -> int:
        """Bytes held by the cached tensors (what the kv_memory model predicts)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)
