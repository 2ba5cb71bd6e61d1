"""Architecture profiles (profiles/architectures/*.toml): shapes of popular open models, for planning without weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.config import ConfigError, DecoderConfig
from workbench.errors import ProfileError
from workbench.settings.toml import at, profiles_dir, read_toml, unknown_name


@dataclass(frozen=True)
class Architecture:
    """An architecture profile: the DecoderConfig plus where it came from and what it omits.

    ``extras`` holds facts DecoderConfig has no field for (Gemma 2's softcaps, DeepSeek's
    q_lora_rank, ...); ``notes`` says how any of them changed the config.
    """

    name: str
    config: DecoderConfig
    source: str
    path: Path
    hf_id: str | None = None
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()


_ARCHITECTURE_META = {"source", "hf_id", "extras"}


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(DecoderConfig)}


def _architecture_paths() -> dict[str, Path]:
    folder = profiles_dir() / "architectures"
    return {path.stem: path for path in sorted(folder.glob("*.toml"))}


def list_architectures() -> list[str]:
    """Names of the shipped architecture profiles."""
    return list(_architecture_paths())


def get_architecture(name: str) -> DecoderConfig:
    """The DecoderConfig of an architecture profile (by name or Hugging Face id)."""
    return get_architecture_profile(name).config


def get_architecture_profile(name: str) -> Architecture:
    """An architecture profile with its provenance, by file name or ``hf_id``, any case."""
    paths = _architecture_paths()
    wanted = name.strip().lower()
    if wanted in paths:
        return _load_architecture(paths[wanted])
    for path in paths.values():
        architecture = _load_architecture(path)
        if (architecture.hf_id or "").lower() == wanted:
            return architecture
    raise unknown_name("architecture", name, list(paths))


def _load_architecture(path: Path) -> Architecture:
    data = read_toml(path)
    unknown = sorted(set(data) - _CONFIG_FIELDS - _ARCHITECTURE_META)
    if unknown:
        known = sorted(_CONFIG_FIELDS | _ARCHITECTURE_META)
        raise unknown_name("architecture key", unknown[0], known, at(path, "", unknown[0]))
    extras = dict(data.pop("extras", {}))
    source, hf_id = str(data.pop("source", "")), data.pop("hf_id", None)
    data.setdefault("name", path.stem)
    notes: list[str] = []
    period = extras.get("sliding_window_period")
    if period is not None and data.get("sliding_window") is not None:
        layers = tuple(range(0, int(data.get("n_layers", 0)), int(period)))
        data["sliding_layers"] = layers
    try:
        config = DecoderConfig.from_dict(data)
    except (ConfigError, TypeError) as error:
        raise ProfileError(f"{path}: {error}") from None
    return Architecture(config.name, config, source, path, hf_id, extras, tuple(notes))
