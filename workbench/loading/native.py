"""The workbench's own checkpoint format: workbench.json (the DecoderConfig) + model.safetensors."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import save_file

from workbench.config import ConfigError, DecoderConfig
from workbench.errors import CheckpointError
from workbench.loading.sources import NATIVE_CONFIG, read_json

NATIVE_WEIGHTS = "model.safetensors"
NATIVE_FORMAT = "workbench-checkpoint"
NATIVE_VERSION = 1


def native_config(path: Path) -> DecoderConfig:
    data = read_json(path)
    if data.get("format") != NATIVE_FORMAT:
        raise CheckpointError(f"{path}: not a workbench checkpoint (format is {data.get('format')!r})")
    if data.get("version") != NATIVE_VERSION:
        raise CheckpointError(f"{path}: unsupported workbench checkpoint version {data.get('version')!r}")
    try:
        return DecoderConfig.from_dict(data.get("config", {}))
    except ConfigError as error:
        raise CheckpointError(f"{path}: {error}") from None


def save_checkpoint(model, folder: str | os.PathLike) -> Path:
    """Write ``model`` as a workbench checkpoint folder (config + safetensors, no pickle)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("unembed.weight", None)
    save_file(state, str(folder / NATIVE_WEIGHTS))
    document = {"format": NATIVE_FORMAT, "version": NATIVE_VERSION, "config": model.config.to_dict()}
    (folder / NATIVE_CONFIG).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return folder
