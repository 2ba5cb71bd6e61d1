"""The native backend: the workbench's own hooked decoder, numerically equal to transformers."""

from __future__ import annotations

import torch

from workbench.backends.base import LoadedModel, ModelDescription
from workbench.config import DecoderConfig
from workbench.loading.checkpoint import load_config, load_model
from workbench.loading.sources import DEFAULT_MODEL
from workbench.loading.tokenizer import load_tokenizer
from workbench.model.hooks import hooks
from workbench.recorders import PatternRequest, Recording, record
from workbench.recorders.nonfinite import ActivationWatch, NonfiniteTensor


class NativeBackend:
    """Loads any checkpoint the workbench reads into a :class:`~workbench.model.decoder.HookedDecoder`."""

    name = "native"
    loading_note = ""
    recording_note = ""

    def supports(self, concern: str, description: ModelDescription | None = None) -> bool:
        return True

    def planning_config(self, source: str | None) -> DecoderConfig | None:
        return load_config(source)

    def load(self, source: str | None, dtype: str, device: str) -> LoadedModel:
        tokenizer = load_tokenizer(source)  # before the weights: a broken tokenizer file is refused cheaply
        model = load_model(source, dtype=dtype, device=device)
        config = model.config
        description = ModelDescription(
            source=str(source or DEFAULT_MODEL), name=config.name, model_type=config.model_type,
            n_layers=config.n_layers, n_heads=config.n_heads, n_experts=config.n_experts,
            vocab_size=config.vocab_size, max_positions=config.max_positions, positions=config.positions,
            config=config.to_dict(), n_params=model.n_params(), weights_quant=config.weights_quant,
            decoder_config=config,
        )
        return LoadedModel(model, description, tokenizer)

    def record(self, loaded: LoadedModel, tokens: torch.Tensor, *, attention: bool, residual: bool,
               routing: bool, loss: bool, patterns: list[PatternRequest],
               watch_nonfinite: bool) -> tuple[Recording, NonfiniteTensor | None]:
        model = loaded.module
        watch = ActivationWatch(model) if watch_nonfinite else None
        with torch.no_grad(), record(
            model, attention=attention, residual=residual, routing=routing and model.config.n_experts > 0,
            loss=loss, patterns=patterns,
        ) as recording, hooks(model, watch.hooks() if watch else []):
            model.hidden(tokens)
        return recording, (watch.first if watch else None)
