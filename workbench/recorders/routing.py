"""Routing recorder: what the router of every MoE layer did, reduced to per-expert numbers.

Per MoE layer (counts add up over every forward inside one ``record`` block):

* ``load[e]``: token-slots routed to expert e (sums to tokens x top_k);
* ``importance[e]``: mean router probability of e over tokens (sums to 1);
* ``entropy``: mean router entropy per token, nats (``entropy_norm``: / log n_experts);
* ``first[e]``: tokens whose first choice (the chosen expert with the largest weight) is e;
* ``coselect[e, f]``: tokens that chose both e and f (diagonal = load = per-token coverage);
* ``sample``: the choices (experts and weights) at a few evenly spaced positions.

Routers are judged on what they select: ``load`` counts the experts actually chosen, so a
DeepSeek V3 router's selection-only bias (which shifts choices, not weights) is in it. A sigmoid
router (``config.router_score``) scores each expert independently; its "probabilities" here
are the sigmoid scores normalised to sum to one per token, the share of gate mass each expert
would get (a softmax of its logits would describe a router it is not).

A :class:`RoutingRecord` holds these per layer, pooled over every input it saw, and (when the
pipeline routed several kinds of input: natural text, structured text, repeated blocks, random
ids) the same numbers per input kind in ``by_input``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LayerRouting:
    layer: int
    n_experts: int
    top_k: int
    score: str = "softmax"  # the router's scores: "softmax" or "sigmoid" (normalised per token)
    tokens: int = 0
    load: torch.Tensor | None = None  # (E,) int64
    prob_sum: torch.Tensor | None = None  # (E,) float64, sum over tokens of router probs
    entropy_sum: float = 0.0
    coselect: torch.Tensor | None = None  # (E, E) int64
    first: torch.Tensor | None = None  # (E,) int64, tokens whose first choice is e
    sample_positions: list[int] = field(default_factory=list)
    sample_experts: list[list[int]] = field(default_factory=list)
    sample_weights: list[list[float]] = field(default_factory=list)

    @property
    def importance(self) -> torch.Tensor:
        return (self.prob_sum / max(self.tokens, 1)).float()

    @property
    def load_share(self) -> torch.Tensor:
        return self.load.double() / max(int(self.load.sum()), 1)

    @property
    def entropy(self) -> float:
        return self.entropy_sum / max(self.tokens, 1)

    @property
    def entropy_norm(self) -> float:
        return self.entropy / math.log(self.n_experts) if self.n_experts > 1 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "score": self.score,
            "tokens": self.tokens,
            "load": self.load.tolist(),
            "importance": [round(float(x), 6) for x in self.importance],
            "entropy": round(self.entropy, 6),
            "entropy_norm": round(self.entropy_norm, 6),
            "coselect": self.coselect.tolist(),
            "first_choice": self.first.tolist(),
            "sample": {
                "positions": self.sample_positions,
                "experts": self.sample_experts,
                "weights": [[round(w, 6) for w in row] for row in self.sample_weights],
            },
        }


    def add(self, other: LayerRouting) -> None:
        """Add ``other``'s counts (the same layer seen on another input) to these."""
        if other.load is None:
            return
        if self.load is None:
            self.load, self.prob_sum = other.load.clone(), other.prob_sum.clone()
            self.coselect, self.first = other.coselect.clone(), other.first.clone()
            self.sample_positions, self.sample_experts = list(other.sample_positions), list(other.sample_experts)
            self.sample_weights = list(other.sample_weights)
        else:
            self.load += other.load
            self.prob_sum += other.prob_sum
            self.coselect += other.coselect
            self.first += other.first
        self.entropy_sum += other.entropy_sum
        self.tokens += other.tokens


@dataclass
class RoutingRecord:
    """Per MoE layer routing counts, pooled over every input; ``by_input`` keeps them per input
    kind (empty when only one input was routed)."""

    layers: dict[int, LayerRouting]
    by_input: dict[str, dict[int, LayerRouting]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"layers": [self.layers[layer].to_dict() for layer in sorted(self.layers)]}
        if self.by_input:
            data["inputs"] = {
                kind: {"tokens": next(iter(layers.values())).tokens if layers else 0,
                       "layers": [{"layer": layer, "load": state.load.tolist(),
                                   "first_choice": state.first.tolist(),
                                   "entropy_norm": round(state.entropy_norm, 6)}
                                  for layer, state in sorted(layers.items())]}
                for kind, layers in self.by_input.items()
            }  # fmt: skip
        return data


def combine(records: dict[str, RoutingRecord]) -> RoutingRecord | None:
    """One record from the records of several input kinds: counts pooled per layer, each kind
    kept in ``by_input``. None when no record routed anything."""
    present = {kind: record for kind, record in records.items() if record is not None and record.layers}
    if not present:
        return None
    pooled: dict[int, LayerRouting] = {}
    for record in present.values():
        for layer, state in record.layers.items():
            pooled.setdefault(layer, LayerRouting(layer, state.n_experts, state.top_k, state.score)).add(state)
    by_input = {kind: dict(record.layers) for kind, record in present.items()} if len(present) > 1 else {}
    return RoutingRecord(pooled, by_input)


def accumulate(
    state: LayerRouting, logits: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, samples: int
) -> None:
    """Add one forward's router output: logits ``[B, T, E]``, chosen ``indices/weights [B, T, k]``."""
    E = state.n_experts
    if state.score == "sigmoid":
        scores = torch.sigmoid(logits.reshape(-1, E).float())
        probs = scores / scores.sum(dim=-1, keepdim=True)  # (N, E) each expert's share of gate mass
    else:
        probs = torch.softmax(logits.reshape(-1, E).float(), dim=-1)  # (N, E)
    chosen = indices.reshape(-1, indices.shape[-1]).cpu()  # (N, k)
    onehot = torch.zeros(chosen.shape[0], E, dtype=torch.int64).scatter_(1, chosen, 1)
    if state.load is None:
        state.load = torch.zeros(E, dtype=torch.int64)
        state.prob_sum = torch.zeros(E, dtype=torch.float64)
        state.coselect = torch.zeros(E, E, dtype=torch.int64)
        state.first = torch.zeros(E, dtype=torch.int64)
    # first choice: the chosen expert with the largest gate weight (what the token mostly gets;
    # for a softmax router the argmax of its probabilities)
    first_N = chosen.gather(1, weights.reshape(-1, weights.shape[-1]).argmax(dim=-1, keepdim=True).cpu())[:, 0]
    state.first += torch.bincount(first_N, minlength=E)
    state.load += torch.bincount(chosen.reshape(-1), minlength=E)
    state.prob_sum += probs.sum(0).double().cpu()
    state.entropy_sum += float(-torch.special.xlogy(probs, probs).sum())
    state.coselect += onehot.T @ onehot
    if not state.sample_positions:
        T = indices.shape[1]
        n = min(samples, T)  # evenly spaced over the whole input, first and last included
        positions = sorted({round(i * (T - 1) / max(n - 1, 1)) for i in range(n)})
        state.sample_positions = positions
        state.sample_experts = [indices[0, p].tolist() for p in positions]
        state.sample_weights = [[float(w) for w in weights[0, p]] for p in positions]
    state.tokens += chosen.shape[0]


class RoutingRecorder:
    """Hooks every MoE layer's router logits, expert indices and weights."""

    def __init__(self, model: Any, samples: int = 32) -> None:
        self.model = model
        self.samples = samples
        config = model.config
        self.layers = {
            layer: LayerRouting(layer, config.n_experts, config.top_k, config.router_score)
            for layer in range(config.n_layers)
            if config.is_moe_layer(layer)
        }
        self._pending: dict[int, dict[str, torch.Tensor]] = {}

    def hooks(self) -> list[tuple[str, Any]]:
        fwd = []
        for layer in self.layers:
            for name in ("hook_router_logits", "hook_expert_indices", "hook_expert_weights"):
                fwd.append((f"blocks.{layer}.mlp.{name}", self._capture(layer, name)))
        return fwd

    def _capture(self, layer: int, name: str):
        def hook(tensor: torch.Tensor, point: Any) -> None:
            pending = self._pending.setdefault(layer, {})
            pending[name] = tensor.detach()
            if name == "hook_expert_weights":
                accumulate(self.layers[layer], pending["hook_router_logits"],
                           pending["hook_expert_indices"], tensor.detach(), self.samples)
                del self._pending[layer]

        return hook

    def finish(self) -> RoutingRecord | None:
        if not self.layers:
            return None
        return RoutingRecord({k: v for k, v in self.layers.items() if v.load is not None})

