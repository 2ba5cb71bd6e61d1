"""What the pipeline needs from a way of running a model: the Backend protocol.

Two backends implement it: :class:`~workbench.backends.native.NativeBackend` (the hooked
decoder) and :class:`~workbench.backends.nnsight.backend.NnsightBackend` (the transformers model
itself, traced with nnsight). The pipeline runs either the same way; whatever a backend cannot
do becomes a ``skip`` finding whose reason comes from :data:`NOT_SUPPORTED`, the one table of
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from workbench.config import DecoderConfig
from workbench.recorders import PatternRequest, Recording
from workbench.recorders.nonfinite import NonfiniteTensor

# concern -> (the analyzer whose skip finding says so, why a backend may not run it)
NOT_SUPPORTED: dict[str, tuple[str, str]] = {
    "length": ("length_extrapolation", "the length sweep runs on the hooked decoder only"),
    "timing": ("timing", "per-block profiler ranges need the hooked decoder"),
    "kv": ("kv_memory", "the KV plan needs a config the workbench understands (use `workbench kv` "
                        "with an architecture profile)"),
}


@dataclass(frozen=True)
class ModelDescription:
    """What the pipeline and the report know of a loaded model, whatever ran it."""

    source: str
    name: str
    model_type: str
    n_layers: int
    n_heads: int
    n_experts: int
    vocab_size: int
    max_positions: int
    positions: str  # "rope", "alibi", "learned", "sinusoidal", "none" or "unknown"
    config: dict[str, Any]  # the configuration as the report shows it
    n_params: int
    weights_quant: str | None = None
    decoder_config: DecoderConfig | None = None  # what the KV planner reads; None if not understood

    def model_info(self) -> dict[str, Any]:
        """The report's ``model`` section."""
        return {"source": self.source, "name": self.name, "model_type": self.model_type,
                "config": self.config, "n_params": self.n_params, "weights_quant": self.weights_quant}


@dataclass
class LoadedModel:
    """A model ready to run: the module, its description and its tokenizer (None: ids only)."""

    module: torch.nn.Module
    description: ModelDescription
    tokenizer: Any


class Backend(Protocol):
    """A way of loading and recording a model; see the module docstring."""

    name: str
    # what progress messages add after "loading model" and "recording a ... probe"
    loading_note: str
    recording_note: str

    def supports(self, concern: str, description: ModelDescription | None = None) -> bool:
        """Whether this backend runs ``concern`` on that model (``description`` None: before
        loading, on any model it may load). Concerns: the keys of :data:`NOT_SUPPORTED`, which a
        run reports as skips, and ``stored_dtype`` (the probe in the checkpoint's own dtype) and
        ``layer_progress`` (per-block progress ticks), which it leaves out quietly."""
        ...

    def planning_config(self, source: str | None) -> DecoderConfig | None:
        """The config the memory guard plans with before loading (None: not understood)."""
        ...

    def load(self, source: str | None, dtype: str, device: str) -> LoadedModel:
        """Load ``source`` for this backend."""
        ...

    def record(self, loaded: LoadedModel, tokens: torch.Tensor, *, attention: bool, residual: bool,
               routing: bool, loss: bool, patterns: list[PatternRequest],
               watch_nonfinite: bool) -> tuple[Recording, NonfiniteTensor | None]:
        """One recorded forward of the main probe, and the first non-finite activation (if watched)."""
        ...
