"""nonfinite: NaN or Inf in the weights or arising in activations, located where it starts.

Reads the records of :mod:`workbench.recorders.nonfinite` and names the first layer and sublayer
where a non-finite value appears. Downstream analyzers skip what cannot be computed and say so
(:func:`downstream_skips`). A half-precision checkpoint is also judged in its own dtype
(:func:`analyze_stored_dtype`): a float16 checkpoint whose float16 forward overflows fails with
no flags given.
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


def analyze_stored_dtype(first: NonfiniteTensor | None, dtype: str, tokens: int) -> list[Finding]:
    """One finding on the probe run in the checkpoint's own (half-precision) dtype: pass, or
    fail at the first hook point whose output is not finite in that dtype."""
    if first is None:
        return [Finding(NAME, f"activations_{dtype}", "pass",
                        f"a {tokens}-token probe in {dtype}, the checkpoint's own dtype, stays finite")]
    return [Finding(
        NAME, f"activations_{dtype}", "fail",
        f"in {dtype}, the dtype the checkpoint is stored in, non-finite activations first appear at {first.name} "
        f"({first.count} of {first.total} values) on a {tokens}-token probe",
        where=_where(first.name), metric="nonfinite_values", value=float(first.count), threshold=0.0,
        fix=f"The checkpoint overflows {dtype}: serve it in bfloat16 or float32, or rescale the sublayer "
            "whose output overflows (its weights or the norm before it) and save again.",
        details={"dtype": dtype, "tokens": tokens},
    )]


# The analyzer each concern's records feed (residual and loss feed report sections only).
_DOWNSTREAM = {"attention": "attention_saturation", "routing": "routing_collapse", "length": "length_extrapolation"}


def downstream_skips(concerns: set[str]) -> list[Finding]:
    """One ``skip`` per analyzer that cannot judge records holding NaN/Inf, saying why."""
    return [Finding(_DOWNSTREAM[concern], "nonfinite_inputs", "skip",
                    "not judged: the probe's activations are not finite (see the nonfinite finding)",
                    fix="Fix the non-finite values first; this check runs once the forward is finite.")
            for concern in sorted(concerns) if concern in _DOWNSTREAM]
