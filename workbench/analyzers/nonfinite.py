"""nonfinite: NaN or Inf in the weights or arising in activations, located where it starts.

Reads the records of :mod:`workbench.recorders.nonfinite` and names the first layer and sublayer
where a non-finite value appears. Downstream analyzers skip what cannot be computed and say so.
"""

from __future__ import annotations

import re

from workbench.findings import Finding, Where
from workbench.recorders.nonfinite import NonfiniteTensor

NAME = "nonfinite"
_LAYER = re.compile(r"(?:.*\.)?(?:blocks|layers|h)\.(\d+)\.(.*)")  # ours, and transformers layer lists


def _where(name: str) -> Where:
    match = _LAYER.match(name)
    if match is None:
        return Where(sublayer=name)
    layer, rest = int(match.group(1)), match.group(2)
    sublayer = rest.split(".")[0] if "." in rest else rest
    return Where(layer=layer, sublayer=sublayer)


def analyze_weights(bad: list[NonfiniteTensor]) -> list[Finding]:
    """One finding on the weight scan: pass, or fail naming the first bad tensor."""
    if not bad:
        return [Finding(NAME, "weights", "pass", "every weight is finite")]
    first = bad[0]
    return [Finding(
        NAME, "weights", "fail",
        f"{len(bad)} weight tensors hold NaN/Inf; the first is {first.name} ({first.count} of {first.total} values)",
        where=_where(first.name), metric="nonfinite_tensors", value=float(len(bad)), threshold=0.0,
        fix="The checkpoint is corrupt or was saved after a divergent step: reload an earlier "
            "checkpoint, and check the training loss for the step where it diverged.",
        details={"tensors": [b.name for b in bad[:20]]},
    )]


def analyze_activations(first: NonfiniteTensor | None) -> list[Finding]:
    """One finding on the activation watch: pass, or fail at the first non-finite hook point."""
    if first is None:
        return [Finding(NAME, "activations", "pass", "every recorded activation is finite")]
    return [Finding(
        NAME, "activations", "fail",
        f"non-finite activations first appear at {first.name} ({first.count} of {first.total} values)",
        where=_where(first.name), metric="nonfinite_values", value=float(first.count), threshold=0.0,
        fix="Look at the weights and inputs of that sublayer: overflow in fp16 (use bf16 or "
            "fp32), a norm with eps=0, or NaN weights upstream.",
    )]
