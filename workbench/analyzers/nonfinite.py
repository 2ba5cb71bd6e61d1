"""nonfinite: NaN or Inf in the weights or arising in activations, located where it starts.

Weights are scanned tensor by tensor; activations are watched at every hook point during one
forward, in execution order, and the first place a non-finite value appears is named (layer and
sublayer). Downstream analyzers skip what cannot be computed and say so.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from workbench.findings import Finding, Where

NAME = "nonfinite"
_LAYER = re.compile(r"blocks\.(\d+)\.(.*)")


def _where(name: str) -> Where:
    match = _LAYER.match(name)
    if match is None:
        return Where(sublayer=name)
    layer, rest = int(match.group(1)), match.group(2)
    sublayer = rest.split(".")[0] if "." in rest else rest
    return Where(layer=layer, sublayer=sublayer)


def scan_weights(model: torch.nn.Module) -> list[Finding]:
    bad = []
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append((name, count, tensor.numel()))
    if not bad:
        return [Finding(NAME, "weights", "pass", "every weight is finite")]
    name, count, total = bad[0]
    return [Finding(
        NAME, "weights", "fail",
        f"{len(bad)} weight tensors hold NaN/Inf; the first is {name} ({count} of {total} values)",
        where=_where(name), metric="nonfinite_tensors", value=float(len(bad)), threshold=0.0,
        fix="The checkpoint is corrupt or was saved after a divergent step: reload an earlier "
            "checkpoint, and check the training loss for the step where it diverged.",
        details={"tensors": [b[0] for b in bad[:20]]},
    )]


class ActivationWatch:
    """Records the first hook point (in execution order) whose output is not finite."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.first: tuple[str, int, int] | None = None

    def hooks(self) -> list[tuple[Any, Any]]:
        def watch(tensor: torch.Tensor, point: Any) -> None:
            if self.first is None and tensor.is_floating_point():
                bad = ~torch.isfinite(tensor)
                if bool(bad.any()):
                    self.first = (point.name, int(bad.sum()), tensor.numel())

        # Scores and patterns hold -inf / 0 by design where keys are masked, and hooking them
        # would force the O(T^2) attention path: they are not watched.
        skipped = ("hook_tokens", "hook_attn_scores", "hook_pattern")
        return [(lambda name: not name.endswith(skipped), watch)]

    def findings(self) -> list[Finding]:
        if self.first is None:
            return [Finding(NAME, "activations", "pass", "every recorded activation is finite")]
        name, count, total = self.first
        return [Finding(
            NAME, "activations", "fail",
            f"non-finite activations first appear at {name} ({count} of {total} values)",
            where=_where(name), metric="nonfinite_values", value=float(count), threshold=0.0,
            fix="Look at the weights and inputs of that sublayer: overflow in fp16 (use bf16 or "
                "fp32), a norm with eps=0, or NaN weights upstream.",
        )]
