"""Feed-forward sublayers: the dense MLP (plain or gated) and the top-k mixture of experts.

Shapes: N tokens (batch x pos flattened), E experts, k experts per token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from workbench.config import DecoderConfig
from workbench.model.hooks import HookPoint


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # Written out as GPT-2 and BLOOM define it, so results match those models to the last bit
    # more often than F.gelu(approximate="tanh") does.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": _gelu_tanh,
    "relu": F.relu,
}


class MLP(nn.Module):
    """``w_out(act(w_gate x) * w_in x)`` when gated (SwiGLU), else ``w_out(act(w_in x))``."""

    def __init__(self, config: DecoderConfig, d_mlp: int | None = None) -> None:
        super().__init__()
        d_mlp = d_mlp or config.d_mlp
        self.act = ACTIVATIONS[config.activation]
        self.w_gate = nn.Linear(config.d_model, d_mlp, bias=config.mlp_bias) if config.gated_mlp else None
        self.w_in = nn.Linear(config.d_model, d_mlp, bias=config.mlp_bias)
        self.w_out = nn.Linear(d_mlp, config.d_model, bias=config.mlp_bias)
        self.hook_post = HookPoint()  # [batch, pos, d_mlp] the activations before w_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w_gate is not None:
            hidden = self.act(self.w_gate(x)) * self.w_in(x)
        else:
            hidden = self.act(self.w_in(x))
        return self.w_out(self.hook_post(hidden))


def route(logits: torch.Tensor, top_k: int, norm_topk_prob: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The router's choice: softmax over all experts in fp32, the ``top_k`` largest, renormalised
    to sum to one when ``norm_topk_prob``. ``logits`` ``[..., E]`` -> (weights fp32, indices), each
    ``[..., k]``. The one routing rule: the MoE block and the nnsight backend both use it."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, indices = torch.topk(probs, top_k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices


class MoE(nn.Module):
    """Top-k routed experts (Mixtral, Qwen2-MoE), with an optional sigmoid-gated shared expert.

    The router's softmax is taken in fp32 over all experts, the top k are kept and, when
    ``norm_topk_prob``, renormalised to sum to one.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = config.n_experts, config.top_k
        self.norm_topk_prob = config.norm_topk_prob
        self.router = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.experts = nn.ModuleList(
            MLP(config, config.d_expert or config.d_mlp) for _ in range(config.n_experts)
        )
        if config.d_shared_expert:
            self.shared_expert = MLP(config, config.d_shared_expert)
            self.shared_gate = nn.Linear(config.d_model, 1, bias=False)
        else:
            self.shared_expert, self.shared_gate = None, None
        self.hook_router_logits = HookPoint()  # [batch, pos, n_experts]
        self.hook_expert_indices = HookPoint()  # [batch, pos, top_k] int64
        self.hook_expert_weights = HookPoint()  # [batch, pos, top_k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d_model = x.shape
        logits = self.hook_router_logits(self.router(x))  # (B, T, E)
        weights, indices = route(logits, self.top_k, self.norm_topk_prob)  # (B, T, k)
        indices = self.hook_expert_indices(indices)
        weights = self.hook_expert_weights(weights.to(x.dtype))
        tokens_ND = x.reshape(-1, d_model)
        indices_Nk, weights_Nk = indices.reshape(-1, self.top_k), weights.reshape(-1, self.top_k)
        out_ND = torch.zeros_like(tokens_ND)
        for expert in range(self.n_experts):
            token_ids, slot = torch.nonzero(indices_Nk == expert, as_tuple=True)
            if token_ids.numel() == 0:
                continue
            expert_out = self.experts[expert](tokens_ND[token_ids])
            out_ND.index_add_(0, token_ids, expert_out * weights_Nk[token_ids, slot, None])
        if self.shared_expert is not None:
            gate = torch.sigmoid(self.shared_gate(tokens_ND))
            out_ND = out_ND + gate * self.shared_expert(tokens_ND)
        return out_ND.view(B, T, d_model)
