"""Run profiles (default.toml, ci.toml, long.toml or a file): probes, seed, deployment, thresholds.

The package docstring (workbench.settings) describes all three kinds of shipped TOML data.
Every profile is merged over ``default.toml``; it may only set keys default.toml has.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import ProfileError
from workbench.settings.devices import get_device
from workbench.settings.toml import at, profiles_dir, read_toml, unknown_name

# --- devices ------------------------------------------------------------------------------


# --- architectures --------------------------------------------------------------------------


# --- run profiles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """The deployment shape the KV-memory analyzer plans for.

    ``context`` None means the model's max_positions; ``kv_dtype`` None means the model's
    compute dtype; ``utilization``, ``block_size`` and ``prefill_chunk`` (the engine's
    max_num_batched_tokens) None mean the engine's defaults. ``engine`` names a table in
    ``profiles/engines/``; ``oversize`` is diagnose's status for a deployment that does not fit
    ("warn": a limit of the deployment; "fail" for profiles that gate on it).
    """

    device: str
    batch: int
    context: int | None
    kv_dtype: str | None
    utilization: float | None
    block_size: int | None
    tp: int
    prefill_chunk: int | None
    engine: str = "vllm"
    oversize: str = "warn"


@dataclass(frozen=True)
class Profile:
    """A run profile merged over default.toml. ``thresholds[analyzer][name]`` is the value;
    ``threshold_sources[analyzer][name]`` says where it comes from (a profile's own override
    is credited to that profile's file)."""

    name: str
    path: Path
    description: str
    seed: int
    probes: dict[str, Any]
    deployment: Deployment
    thresholds: dict[str, dict[str, Any]]
    threshold_sources: dict[str, dict[str, str]]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        return data


_TOP_LEVEL = {"name", "description", "run", "probes", "deployment", "thresholds"}


def list_profiles() -> list[str]:
    """Names of the shipped run profiles (``default``, ``ci``, ...)."""
    return sorted(p.stem for p in profiles_dir().glob("*.toml") if p.name != "devices.toml")


def load_profile(name_or_path: str | os.PathLike[str] = "default") -> Profile:
    """A shipped profile by name, or any TOML file by path, merged over default.toml."""
    default_path = profiles_dir() / "default.toml"
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text or Path(text).is_file():
        path = Path(text)
    elif text in list_profiles():
        path = profiles_dir() / f"{text}.toml"
    else:
        raise unknown_name("profile", text, list_profiles())
    base = read_toml(default_path)
    _check_default(default_path, base)
    override = read_toml(path) if path.resolve() != default_path.resolve() else {}
    merged, sources = _merge(default_path, base, path, override)
    return Profile(
        name=str(merged.get("name", path.stem)),
        path=path,
        description=str(merged.get("description", "")),
        seed=_integer(path, "run", "seed", merged["run"]["seed"], 0),
        probes=_probes(path, merged["probes"]),
        deployment=_deployment(path, merged["deployment"]),
        thresholds=_thresholds(path, merged["thresholds"]),
        threshold_sources=sources,
    )


def _value(entry: Any) -> Any:
    return entry["value"] if isinstance(entry, dict) else entry


def _check_default(path: Path, data: dict[str, Any]) -> None:
    for section in ("run", "probes", "deployment", "thresholds"):
        if not isinstance(data.get(section), dict):
            raise ProfileError(f"{path}: missing table [{section}]")
    for analyzer, table in data["thresholds"].items():
        for key, entry in table.items():
            if not (isinstance(entry, dict) and set(entry) == {"value", "source"}):
                where = at(path, f"thresholds.{analyzer}", key)
                raise ProfileError(f"{where}: threshold {key!r} needs {{ value = ..., source = ... }}")


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return type(default) is type(value)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def _merge(
    default_path: Path, base: dict[str, Any], path: Path, override: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """default.toml with ``override`` laid over it, key by key; unknown keys are errors."""
    merged = {key: (dict(value) if isinstance(value, dict) else value) for key, value in base.items()}
    merged["thresholds"] = {name: dict(table) for name, table in base["thresholds"].items()}
    sources = {a: {k: e["source"] for k, e in t.items()} for a, t in base["thresholds"].items()}
    for key, value in override.items():
        if key not in _TOP_LEVEL:
            raise unknown_name("top-level key", key, sorted(_TOP_LEVEL), at(path, "", key))
        if key in ("name", "description"):
            merged[key] = value
        elif key == "thresholds":
            _merge_thresholds(path, merged["thresholds"], sources, value)
        else:
            _merge_table(path, key, merged[key], value, typed=key != "deployment")
    return merged, sources


def _merge_table(path: Path, table: str, into: dict, values: Any, *, typed: bool) -> None:
    if not isinstance(values, dict):
        raise ProfileError(f"{at(path, '', table)}: {table} must be a table")
    for key, value in values.items():
        if key not in into:
            raise unknown_name(f"key in [{table}]", key, sorted(into), at(path, table, key))
        if isinstance(value, dict) and (set(value) - {"value", "source"} or "value" not in value):
            raise ProfileError(f"{at(path, table, key)}: [{table}] {key} must be a value or "
                               "{ value = ..., source = ... }")
        if typed and not _same_kind(_value(into[key]), _value(value)):
            kinds = {"int": "an integer", "float": "a number", "list": "a list", "str": "a string",
                     "bool": "true or false"}
            kind = type(_value(into[key])).__name__
            raise ProfileError(f"{at(path, table, key)}: [{table}] {key} must be {kinds.get(kind, kind)}")
        into[key] = value


def _merge_thresholds(path: Path, into: dict, sources: dict, values: Any) -> None:
    if not isinstance(values, dict):
        raise ProfileError(f"{at(path, '', 'thresholds')}: thresholds must be a table")
    for analyzer, table in values.items():
        if analyzer not in into:
            raise unknown_name("analyzer in [thresholds]", analyzer, sorted(into), str(path))
        _merge_table(path, f"thresholds.{analyzer}", into[analyzer], table, typed=True)
        for key, entry in table.items():
            own = entry.get("source") if isinstance(entry, dict) else None
            sources[analyzer][key] = str(own or f"overridden in {path}")


def _integer(path: Path, table: str, key: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        where = at(path, table, key)
        raise ProfileError(f"{where}: [{table}] {key} must be an integer >= {minimum}")
    return value


# [probes] keys: the least each integer may be, and the lists of lengths and of factors.
_PROBE_MINIMUMS = {"tokens": 2, "max_tokens": 2, "batch": 1, "repeat_block": 1}
_PROBE_LENGTH_LISTS = ("lengths",)
_PROBE_FACTOR_LISTS = ("extrapolation_factors",)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _probes(path: Path, table: dict[str, Any]) -> dict[str, Any]:
    """The [probes] table, every size an integer in range and every factor a finite number > 0."""
    probes = dict(table)
    for key, minimum in _PROBE_MINIMUMS.items():
        if key in probes:
            _integer(path, "probes", key, _value(probes[key]), minimum)
    for key in _PROBE_LENGTH_LISTS:
        values = _value(probes.get(key, []))
        if not isinstance(values, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 2 for v in values):
            raise ProfileError(f"{at(path, 'probes', key)}: [probes] {key} must be a list of integers >= 2")
    for key in _PROBE_FACTOR_LISTS:
        values = _value(probes.get(key, []))
        if not isinstance(values, list) or not all(_finite(v) and v > 0 for v in values):
            raise ProfileError(f"{at(path, 'probes', key)}: [probes] {key} must be a list of finite numbers > 0")
    return probes


def _thresholds(path: Path, tables: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Threshold values; numbers must be finite and >= 0 (a NaN compares false with everything and
    would silently pass every check; no threshold is a negative quantity)."""
    values: dict[str, dict[str, Any]] = {}
    for analyzer, table in tables.items():
        values[analyzer] = {}
        for key, entry in table.items():
            value = _value(entry)
            if isinstance(value, int | float) and not isinstance(value, bool) and not (_finite(value) and value >= 0):
                where = at(path, f"thresholds.{analyzer}", key)
                raise ProfileError(f"{where}: [thresholds.{analyzer}] {key} must be finite and >= 0, got {value!r}")
            values[analyzer][key] = value
    return values


def _deployment(path: Path, table: dict[str, Any]) -> Deployment:
    """Check the deployment table; ``path`` is where overrides came from (for messages)."""
    context, chunk, kv_dtype = table["context"], table["prefill_chunk"], table["kv_dtype"]
    utilization = table["utilization"]
    if utilization != "auto":
        if isinstance(utilization, bool) or not isinstance(utilization, int | float):
            utilization = -1.0  # reported below
        if not 0 < utilization <= 1:
            where = at(path, "deployment", "utilization")
            raise ProfileError(f'{where}: utilization must be a number in (0, 1] or "auto"')
    try:
        device = get_device(str(table["device"])).name
    except ProfileError as error:
        raise ProfileError(f"{at(path, 'deployment', 'device')}: {error}") from None
    oversize = table.get("oversize", "warn")
    if oversize not in ("warn", "fail"):
        raise ProfileError(f'{at(path, "deployment", "oversize")}: oversize must be "warn" or "fail"')
    engine = table.get("engine", "vllm")
    engines = sorted(p.stem for p in (profiles_dir() / "engines").glob("*.toml"))  # settings sits below memory
    if engine not in engines:
        raise unknown_name("engine", str(engine), engines, at(path, "deployment", "engine"))
    block = table["block_size"]
    return Deployment(
        device=device,
        batch=_integer(path, "deployment", "batch", table["batch"], 1),
        context=None if context == "max" else _integer(path, "deployment", "context", context, 1),
        kv_dtype=None if kv_dtype == "auto" else str(kv_dtype),
        utilization=None if utilization == "auto" else float(utilization),
        block_size=None if block == "auto" else _integer(path, "deployment", "block_size", block, 1),
        tp=_integer(path, "deployment", "tp", table["tp"], 1),
        prefill_chunk=None if chunk in ("auto", "none") else _integer(path, "deployment", "prefill_chunk", chunk, 1),
        engine=engine,
        oversize=oversize,
    )
