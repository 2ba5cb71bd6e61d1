"""Where NaN or Inf sits: in the weights (a scan) or arising in activations (a watch).

Weights are scanned tensor by tensor; activations are watched at every hook point during one
forward, in execution order, and the first hook point whose output is not finite is kept.
:mod:`workbench.analyzers.nonfinite` turns both records into findings. A checkpoint stored in
half precision is also watched in its own dtype (:func:`watch_in_dtype`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from workbench.model.hooks import hooks

# The half-precision storage dtypes worth a probe of their own (float32 and float64 cannot
# overflow where the float32 compute path does not).
HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Tokens of the stored-dtype probe: enough to pass through every sublayer with real statistics,
# short enough to stay a fraction of the main probe's cost.
STORED_PROBE_TOKENS = 64


@dataclass(frozen=True)
class NonfiniteTensor:
    """A tensor (weight name or hook point) holding ``count`` of ``total`` values that are NaN/Inf."""

    name: str
    count: int
    total: int


def scan_weights(model: torch.nn.Module) -> list[NonfiniteTensor]:
    """Every floating-point weight of ``model`` that holds a NaN or an Inf, in state-dict order."""
    bad = []
    for name, tensor in model.state_dict().items():
        found = _nonfinite(name, tensor)
        if found is not None:
            bad.append(found)
    return bad


def _nonfinite(name: str, tensor: torch.Tensor) -> NonfiniteTensor | None:
    """``tensor``'s NaN/Inf count under ``name``; None when it is finite (or not floating point)."""
    if not tensor.is_floating_point():
        return None
    bad = ~torch.isfinite(tensor)
    return NonfiniteTensor(name, int(bad.sum()), tensor.numel()) if bool(bad.any()) else None


class ActivationWatch:
    """Records the first hook point (in execution order) whose output is not finite.

    ``hooks()`` gives the (selector, function) pair to attach; ``first`` holds the record.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.first: NonfiniteTensor | None = None

    def hooks(self) -> list[tuple[Any, Any]]:
        def watch(tensor: torch.Tensor, point: Any) -> None:
            if self.first is None:
                self.first = _nonfinite(point.name, tensor)

        # Scores and patterns hold -inf / 0 by design where keys are masked, and hooking them
        # would force the O(T^2) attention path: they are not watched.
        skipped = ("hook_tokens", "hook_attn_scores", "hook_pattern", "hook_result")  # [T, H, d] each
        return [(lambda name: not name.endswith(skipped), watch)]


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


class ModuleWatch:
    """The same watch for any ``nn.Module`` tree (a transformers model): forward hooks on every
    submodule record the first, in execution order, whose output is not finite. A context manager:
    the hooks are removed on exit."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.first: NonfiniteTensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> ModuleWatch:
        for name, module in self.model.named_modules():
            if name:
                self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def watch(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            tensor = _first_tensor(output) if self.first is None else None
            if tensor is not None:
                self.first = _nonfinite(name, tensor)

        return watch


def stored_half_dtype(stored: str, compute_dtype: torch.dtype) -> torch.dtype | None:
    """The checkpoint's half-precision storage dtype (``DecoderConfig.dtype``) when the run
    computes in another one; None when there is nothing to check in a dtype of its own."""
    half = HALF_DTYPES.get(str(stored).removeprefix("torch."))
    return half if half is not None and half != compute_dtype else None


def _round_trips(model: torch.nn.Module, dtype: torch.dtype) -> bool:
    """Every floating parameter is exactly representable in ``dtype`` (true when the weights were
    read from ``dtype`` files): casting there and back then changes nothing."""
    return all(torch.equal(p, p.to(dtype).to(p.dtype)) for p in model.parameters() if p.is_floating_point())


@torch.no_grad()
def watch_in_dtype(model: Any, tokens: torch.Tensor, dtype: torch.dtype) -> NonfiniteTensor | None:
    """Run ``tokens`` ([B, T]) through a hooked decoder cast to ``dtype`` and return the first
    hook point whose output is not finite (None: all finite).

    The model is cast in place and back when its weights round-trip exactly (no second copy of
    a large model); otherwise a cast copy runs. RoPE/ALiBi tables are rebuilt in float32 after
    each cast, as the loader builds them."""
    compute = next(p.dtype for p in model.parameters() if p.is_floating_point())
    in_place = _round_trips(model, dtype)
    cast = model if in_place else copy.deepcopy(model)
    cast.to(dtype=dtype)
    cast.reset_buffers()
    watch = ActivationWatch(cast)
    try:
        with hooks(cast, watch.hooks()):
            cast.hidden(tokens.to(cast.device))
    finally:
        if in_place:
            model.to(dtype=compute)
            model.reset_buffers()
    return watch.first
