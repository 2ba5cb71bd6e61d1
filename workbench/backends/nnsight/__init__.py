"""The nnsight backend: the workbench's records from a transformers model the decoder does not implement.

* :mod:`~workbench.backends.nnsight.layout`: finds a model's layers and sublayers generically;
* :mod:`~workbench.backends.nnsight.trace`: ``record_hf`` traces one forward and returns the same
  records as :func:`workbench.record`;
* :mod:`~workbench.backends.nnsight.backend`: the :class:`~workbench.backends.base.Backend` the
  pipeline runs.
"""

from workbench.backends.nnsight.layout import HFLayout, LayerParts, describe, find_layers
from workbench.backends.nnsight.trace import (
    attention_weights_bytes,
    decompose,
    eager_attention,
    record_hf,
)
from workbench.errors import BackendError

__all__ = [
    "BackendError",
    "HFLayout",
    "LayerParts",
    "attention_weights_bytes",
    "decompose",
    "describe",
    "eager_attention",
    "find_layers",
    "record_hf",
]
