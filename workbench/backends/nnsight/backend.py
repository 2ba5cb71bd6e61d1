"""The nnsight backend as the pipeline runs it: load the transformers model, trace the main probe.

The transformers model itself is loaded (eager attention, so attention weights exist) and traced
with nnsight; the records are the same types as the native ones, so the same analyzers read them.
The length sweep and the per-block profiler ranges need the hooked decoder; the KV plan runs when
the checkpoint's config.json is one the workbench understands.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import transformers

from workbench.backends.base import LoadedModel, ModelDescription
from workbench.backends.nnsight.layout import describe
from workbench.backends.nnsight.trace import record_hf
from workbench.config import DecoderConfig
from workbench.errors import CheckpointError, ConfigError
from workbench.loading import families
from workbench.loading.checkpoint import parse_dtype
from workbench.loading.readers import check_weight_files
from workbench.loading.sources import read_json, resolve
from workbench.loading.tokenizer import load_tokenizer
from workbench.recorders import PatternRequest, Recording
from workbench.recorders.nonfinite import ModuleWatch, NonfiniteTensor


def load_hf_model(source: str | None, dtype: str, device: str) -> Any:
    """The transformers model of a checkpoint folder, in eval mode with eager attention."""
    kind, path = resolve(source)
    if kind != "hf":
        raise CheckpointError(f"{path}: the nnsight backend takes a transformers checkpoint folder")
    check_weight_files(path)  # headers, dtypes, shard paths and file kinds, before transformers reads them
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path), dtype=parse_dtype(dtype), attn_implementation="eager")
    except Exception as error:  # noqa: BLE001 - transformers and safetensors raise many types on bad files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: transformers cannot load it ({first})") from None
    return model.to(device).eval()


class NnsightBackend:
    """Records a transformers model the hooked decoder may not implement."""

    name = "nnsight"
    loading_note = " (transformers)"
    recording_note = " through nnsight"

    def supports(self, concern: str, description: ModelDescription | None = None) -> bool:
        if concern in ("length", "timing", "stored_dtype", "layer_progress"):
            return False
        if concern == "kv":
            return description is not None and description.decoder_config is not None
        return True

    def planning_config(self, source: str | None) -> DecoderConfig | None:
        kind, path = resolve(source)
        if kind != "hf":
            return None
        config_path = path / "config.json"
        try:
            return families.config_from_hf(read_json(config_path), config_path)
        except (CheckpointError, ConfigError):
            return None  # an architecture the decoder does not implement: what this backend is for

    def load(self, source: str | None, dtype: str, device: str) -> LoadedModel:
        model = load_hf_model(source, dtype, device)
        layout = describe(model)
        hf_config = model.config
        model_type = str(getattr(hf_config, "model_type", "unknown"))
        description = ModelDescription(
            source=str(source), name=str(getattr(hf_config, "_name_or_path", "") or model_type),
            model_type=model_type, n_layers=layout.n_layers, n_heads=layout.n_heads,
            n_experts=layout.n_experts, vocab_size=int(hf_config.vocab_size),
            max_positions=int(getattr(hf_config, "max_position_embeddings", 0) or 1 << 20),
            positions="unknown", config=hf_config.to_diff_dict(),
            n_params=sum(p.numel() for p in model.parameters()), weights_quant=None,
            decoder_config=self.planning_config(source),
        )
        return LoadedModel(model, description, load_tokenizer(source))

    def record(self, loaded: LoadedModel, tokens: torch.Tensor, *, attention: bool, residual: bool,
               routing: bool, loss: bool, patterns: list[PatternRequest],
               watch_nonfinite: bool) -> tuple[Recording, NonfiniteTensor | None]:
        model = loaded.module
        device = next(model.parameters()).device
        # The watch's forward hooks fire inside the traced forward: one forward serves both.
        watch = ModuleWatch(model) if watch_nonfinite else contextlib.nullcontext()
        with torch.no_grad(), watch:
            recording = record_hf(model, tokens.to(device), attention=attention, residual=residual,
                                  routing=routing, loss=loss, patterns=patterns)
        first = watch.first if watch_nonfinite else None
        return recording, first
