"""Weights under TransformerLens's names, as views of the hooked decoder's parameters.

Mixed into :class:`~workbench.model.HookedDecoder`. Shapes (L layers, H heads, D d_head, d
d_model, V vocab, m d_mlp, P positions): ``W_E [V, d]``, ``W_pos [P, d]`` (learned or
sinusoidal positions only), ``W_U [d, V]``, ``b_U [V]``; stacked over layers ``W_Q``, ``W_K``,
``W_V`` ``[L, H, d, D]``, ``W_O [L, H, D, d]``, ``b_Q``/``b_K``/``b_V`` ``[L, H, D]``, ``b_O
[L, d]``, ``W_in``/``W_gate`` ``[L, d, m]``, ``W_out [L, m, d]``, ``b_in [L, m]``, ``b_out [L,
d]``; factored circuits ``QK = W_Q W_K^T`` and ``OV = W_V W_O`` ``[L, H, d, d]``.

Grouped-query models repeat each key/value head for the query heads that share it, as
TransformerLens does (``W_K[l, h]`` is the key head query head ``h`` reads). Absent biases are
zeros. Nothing is folded or centred (TransformerLens folds norms by default; the workbench keeps
the checkpoint's weights). ``W_E``, ``W_U`` and ``W_pos`` share storage with the parameters;
the stacked ones are copies (stacking makes one).
"""

from __future__ import annotations

import torch

from workbench.model.factored_matrix import FactoredMatrix
from workbench.model.head_inputs import head_in_weights, head_out_weights


class WeightsMixin:
    """TransformerLens-named weight views."""

    def _attn_heads(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W [L, H, d, D], b [L, H, D])`` of the q, k or v projection, kv heads repeated."""
        weights, biases = [], []
        c = self.config
        for block in self.blocks:
            heads = c.n_heads if part == "q" else c.kv_heads
            weight, bias = head_in_weights(getattr(block.attn, part), heads, c.d_head)
            bias = bias if bias is not None else weight.new_zeros(heads, c.d_head)
            repeat = c.n_heads // heads
            weights.append(weight.repeat_interleave(repeat, dim=0))
            biases.append(bias.repeat_interleave(repeat, dim=0))
        return torch.stack(weights), torch.stack(biases)

    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.weight

    @property
    def W_pos(self) -> torch.Tensor:
        if self.pos_embed is not None:
            return self.pos_embed.weight
        if self.config.positions == "sinusoidal":
            return self.sinusoidal
        raise ValueError(f"{self.config.name}: positions are {self.config.positions!r}, there is no W_pos")

    @property
    def W_U(self) -> torch.Tensor:
        return self.unembed.weight.T

    @property
    def b_U(self) -> torch.Tensor:
        bias = self.unembed.bias
        return bias if bias is not None else self.unembed.weight.new_zeros(self.config.vocab_size)

    @property
    def W_Q(self) -> torch.Tensor:
        return self._attn_heads("q")[0]

    @property
    def W_K(self) -> torch.Tensor:
        return self._attn_heads("k")[0]

    @property
    def W_V(self) -> torch.Tensor:
        return self._attn_heads("v")[0]

    @property
    def b_Q(self) -> torch.Tensor:
        return self._attn_heads("q")[1]

    @property
    def b_K(self) -> torch.Tensor:
        return self._attn_heads("k")[1]

    @property
    def b_V(self) -> torch.Tensor:
        return self._attn_heads("v")[1]

    @property
    def W_O(self) -> torch.Tensor:
        c = self.config
        return torch.stack([head_out_weights(b.attn.o, c.n_heads, c.d_head) for b in self.blocks])

    @property
    def b_O(self) -> torch.Tensor:
        d = self.config.d_model
        return torch.stack([b.attn.o.bias if b.attn.o.bias is not None else b.attn.o.weight.new_zeros(d) for b in self.blocks])

    def _dense_linears(self, part: str) -> list[torch.nn.Linear]:
        """Every layer's dense MLP projection ``part``; refused for MoE layers and ungated MLPs."""
        linears = []
        for layer, block in enumerate(self.blocks):
            linear = getattr(block.mlp, part, None)
            if self.config.is_moe_layer(layer) or linear is None:
                kind = "a mixture of experts" if self.config.is_moe_layer(layer) else "not gated"
                raise ValueError(
                    f"{self.config.name}: layer {layer}'s MLP is {kind}; read "
                    f"blocks[{layer}].mlp's own weights instead of the stacked ones"
                )
            linears.append(linear)
        return linears

    def _dense(self, part: str) -> torch.Tensor:
        return torch.stack([linear.weight.T for linear in self._dense_linears(part)])

    def _dense_bias(self, part: str, width: int) -> torch.Tensor:
        return torch.stack([linear.bias if linear.bias is not None else linear.weight.new_zeros(width)
                            for linear in self._dense_linears(part)])

    @property
    def W_in(self) -> torch.Tensor:
        return self._dense("w_in")

    @property
    def W_gate(self) -> torch.Tensor:
        return self._dense("w_gate")

    @property
    def W_out(self) -> torch.Tensor:
        return self._dense("w_out")

    @property
    def b_in(self) -> torch.Tensor:
        return self._dense_bias("w_in", self.config.d_mlp)

    @property
    def b_out(self) -> torch.Tensor:
        return self._dense_bias("w_out", self.config.d_model)

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q W_K^T`` ``[L, H, d, d]``: query-side residual x key-side residual (no biases)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V W_O`` ``[L, H, d, d]``: what a head writes for what it reads (no biases)."""
        return FactoredMatrix(self.W_V, self.W_O)
