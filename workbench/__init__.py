"""Transformer Workbench: interpretability and profiling for decoder-only transformers.

Load a checkpoint into one hooked decoder, record what happens inside it, and let analyzers turn
the records into findings::

    import workbench
    model = workbench.load_model("smollm2")          # or a folder, a .gguf, a workbench checkpoint
    logits = model(tokens)                            # [batch, pos, vocab]
    with model.hooks([("blocks.0.hook_resid_post", fn)]):   # or workbench.hooks.hooks(model, ...)
        model(tokens)

Imports are lazy so that ``workbench --help`` answers without importing torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "workbench.loading.checkpoint",
    "load_config": "workbench.loading.checkpoint",
    "save_checkpoint": "workbench.loading.native",
    "CheckpointError": "workbench.errors",
    "DecoderConfig": "workbench.config",
    "HookedDecoder": "workbench.model.decoder",
    "KVCache": "workbench.model.kv_cache",
    "Finding": "workbench.findings",
    "record": "workbench.recorders",
    "ActivationCache": "workbench.model.activation_cache",
    "FactoredMatrix": "workbench.model.factored_matrix",
    "get_act_name": "workbench.utils",
    "logit_lens": "workbench.model.lens",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
