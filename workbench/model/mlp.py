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
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp] before the activation (the gate's, when gated)
        self.hook_pre_linear = HookPoint() if config.gated_mlp else None  # [batch, pos, d_mlp] w_in x
        self.hook_post = HookPoint()  # [batch, pos, d_mlp] the activations before w_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w_gate is not None:
            hidden = self.act(self.hook_pre(self.w_gate(x))) * self.hook_pre_linear(self.w_in(x))
        else:
            hidden = self.act(self.hook_pre(self.w_in(x)))
        return self.w_out(self.hook_post(hidden))


def route(
    logits: torch.Tensor,
    top_k: int,
    norm_topk_prob: bool,
    *,
    score: str = "softmax",
    selection_bias: torch.Tensor | None = None,
    n_groups: int = 1,
    topk_groups: int = 1,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The router's choice. ``logits`` ``[..., E]`` -> (weights fp32, indices), each ``[..., k]``.
    The one routing rule: the MoE block and the nnsight backend both use it.

    Scores are a softmax over all experts in fp32 or (DeepSeek V3, ``score="sigmoid"``) each
    expert's sigmoid. ``selection_bias`` ``[E]`` (auxiliary-loss-free balancing) is added to the
    scores for the choice only, never to the weights; with ``n_groups`` > 1, only experts in the
    ``topk_groups`` groups whose two best (biased) scores sum highest compete. The chosen scores
    are renormalised to sum to one when ``norm_topk_prob``, then multiplied by ``scale``.
    """
    if score == "sigmoid":
        scores = torch.sigmoid(logits.float())
    else:
        scores = torch.softmax(logits, dim=-1, dtype=torch.float32)
    if selection_bias is None and n_groups == 1:
        weights, indices = torch.topk(scores, top_k, dim=-1)
    else:
        choice = scores if selection_bias is None else scores + selection_bias.float()
        if n_groups > 1:
            choice = _best_groups_only(choice, n_groups, topk_groups)
        indices = torch.topk(choice, top_k, dim=-1).indices
        weights = scores.gather(-1, indices)  # the bias selects; the weights stay unbiased
    if norm_topk_prob:
        # DeepSeek adds 1e-20 so a sigmoid router's near-zero scores cannot divide by zero
        weights = weights / (weights.sum(dim=-1, keepdim=True) + (1e-20 if score == "sigmoid" else 0.0))
    if scale != 1.0:
        weights = weights * scale
    return weights, indices


def _best_groups_only(choice: torch.Tensor, n_groups: int, topk_groups: int) -> torch.Tensor:
    """``choice [..., E]`` with experts outside the best ``topk_groups`` groups set to -inf; a
    group's merit is the sum of its two best scores (DeepSeek V3's node-limited routing)."""
    grouped = choice.unflatten(-1, (n_groups, -1))  # (..., G, E/G)
    merit = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (..., G)
    best = torch.topk(merit, topk_groups, dim=-1).indices
    keep = torch.zeros_like(merit, dtype=torch.bool).scatter_(-1, best, True)
    return grouped.masked_fill(~keep[..., None], float("-inf")).flatten(-2)


class MoE(nn.Module):
    """Top-k routed experts (Mixtral, Qwen2/3-MoE, DeepSeek V3), with an optional shared expert.

    Routing is :func:`route`: softmax or (DeepSeek V3) sigmoid scores, an optional selection-only
    bias, grouped top-k, renormalised and scaled weights. The shared expert is sigmoid-gated
    (Qwen2-MoE) or plain (DeepSeek V3).
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = config.n_experts, config.top_k
        self.norm_topk_prob = config.norm_topk_prob
        self.score, self.routed_scale = config.router_score, config.routed_scale
        self.n_groups, self.topk_groups = config.n_expert_groups, config.topk_groups
        self.router = nn.Linear(config.d_model, config.n_experts, bias=False)
        if config.router_bias:  # a persistent buffer, as in the checkpoint: it is not trained
            self.register_buffer("selection_bias", torch.zeros(config.n_experts))
        else:
            self.selection_bias = None
        self.experts = nn.ModuleList(
            MLP(config, config.d_expert or config.d_mlp) for _ in range(config.n_experts)
        )
        if config.d_shared_expert:
            self.shared_expert = MLP(config, config.d_shared_expert)
            self.shared_gate = nn.Linear(config.d_model, 1, bias=False) if config.shared_expert_gate else None
        else:
            self.shared_expert, self.shared_gate = None, None
        self.hook_router_logits = HookPoint()  # [batch, pos, n_experts]
        self.hook_expert_indices = HookPoint()  # [batch, pos, top_k] int64
        self.hook_expert_weights = HookPoint()  # [batch, pos, top_k]
        self.hook_pre = HookPoint()  # [batch, pos, d_model] the block's input (TransformerLens's alias)
        self.hook_post = HookPoint()  # [batch, pos, d_model] the block's output (= hook_mlp_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d_model = x.shape
        x = self.hook_pre(x)
        if self.score == "sigmoid":  # DeepSeek: logits in fp32 (its router weight stays fp32)
            logits = self.hook_router_logits(F.linear(x.float(), self.router.weight.float()))  # (B, T, E)
        else:
            logits = self.hook_router_logits(self.router(x))  # (B, T, E)
        weights, indices = route(  # (B, T, k)
            logits, self.top_k, self.norm_topk_prob, score=self.score, selection_bias=self.selection_bias,
            n_groups=self.n_groups, topk_groups=self.topk_groups, scale=self.routed_scale,
        )
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
            shared_ND = self.shared_expert(tokens_ND)
            if self.shared_gate is not None:
                shared_ND = torch.sigmoid(self.shared_gate(tokens_ND)) * shared_ND
            out_ND = out_ND + shared_ND
        return self.hook_post(out_ND.view(B, T, d_model))
