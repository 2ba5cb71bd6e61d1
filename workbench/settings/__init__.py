"""Profiles: the TOML data the workbench ships, loaded and checked.

Three kinds of file live in ``profiles/`` (installed as data next to this module):

- ``devices.toml``: the device catalog (memory, bandwidth, peak FLOP/s) -> :class:`Device`.
- ``architectures/<name>.toml``: shapes of popular open models, for planning without weights
  -> :class:`~workbench.config.DecoderConfig` (with :class:`Architecture` for provenance).
- run profiles (``default.toml``, ``ci.toml``, or any file given by path) -> :class:`Profile`:
  probe lengths, seed, deployment shape, and per-analyzer thresholds. Every profile is merged
  over ``default.toml``; it may only set keys default.toml has.

Every problem is a :class:`ProfileError` with a one-line message that names the file, and the
line where it can be found (``path:line: message``); unknown names suggest the closest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from workbench.config import ConfigError, DecoderConfig
from workbench.errors import ProfileError

_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")



def profiles_dir() -> Path:
    """The folder holding devices.toml, architectures/ and the run profiles.

    An installed copy keeps it inside the package (``workbench/profiles/``); a source checkout
    keeps it beside the package (``profiles/`` next to ``workbench/``).
    """
    candidates = [Path(str(resources.files("workbench") / "profiles"))]
    candidates.append(Path(__file__).resolve().parents[2] / "profiles")
    for folder in candidates:
        if (folder / "devices.toml").is_file():
            return folder
    raise ProfileError(f"no profiles folder found (looked in {', '.join(map(str, candidates))})")


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; a syntax error becomes ``path:line: message (column N)``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ProfileError(f"{path}: cannot read: {error.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message, line, column = str(error), getattr(error, "lineno", None), None
        position = _TOML_POSITION.search(message)
        if position:
            message = message[: position.start()]
            line = line or (int(position[1]) if position[1] else text.count("\n") + 1)
            column = int(position[2]) if position[2] else None
        where = f" (column {column})" if column else ""
        raise ProfileError(f"{path}:{line or '?'}: {message}{where}") from None


def _key_line(path: Path, table: str, key: str) -> int | None:
    """Line of ``key = ...`` inside ``[table]`` ("" for the top level), for error messages."""
    current = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        header = re.match(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", line)
        if header:
            current = header[1].replace('"', "").replace(" ", "")
            continue
        assignment = re.match(r"\s*[\"']?([A-Za-z0-9_.-]+)[\"']?\s*=", line)
        if assignment and current == table and assignment[1] == key:
            return number
    return None


def _at(path: Path, table: str = "", key: str | None = None) -> str:
    line = _key_line(path, table, key) if key is not None else None
    return f"{path}:{line}" if line else str(path)


def _unknown(kind: str, name: str, known: list[str], where: str = "") -> ProfileError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    prefix = f"{where}: " if where else ""
    return ProfileError(f"{prefix}unknown {kind} {name!r}{hint} (known: {', '.join(known)})")


# --- devices ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """One accelerator (or this host's CPU) from devices.toml. See that file for units."""

    name: str
    memory_bytes: int
    memory_stated: str
    source: str
    vendor: str = ""
    bandwidth_bytes_per_second: int | None = None
    peak_16bit_flops_per_second: float | None = None
    fp32_flops_per_second: float | None = None
    bf16: bool = True
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_DEVICE_FIELDS = {f.name for f in dataclasses.fields(Device)} - {"name"}


def host_memory_bytes() -> int:
    """This host's RAM: MemTotal from /proc/meminfo, else os.sysconf."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024  # reported in kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _device_tables() -> tuple[Path, dict[str, dict[str, Any]]]:
    path = profiles_dir() / "devices.toml"
    return path, read_toml(path)


def list_devices() -> list[str]:
    """Names of the catalog's devices, in file order."""
    return list(_device_tables()[1])


def get_device(name: str) -> Device:
    """The catalog device called ``name`` (or one of its aliases), case-insensitively."""
    path, tables = _device_tables()
    wanted = name.strip().lower()
    by_name = {key: key for key in tables}
    by_name.update({alias: key for key, table in tables.items() for alias in table.get("aliases", [])})
    if wanted not in by_name:
        raise _unknown("device", name, list(tables))
    key = by_name[wanted]
    table = dict(tables[key])
    unknown = sorted(set(table) - _DEVICE_FIELDS)
    if unknown:
        raise _unknown("device key", unknown[0], sorted(_DEVICE_FIELDS), _at(path, key, unknown[0]))
    if table.get("memory_bytes") == "host":
        table["memory_bytes"] = host_memory_bytes()
    memory = table.get("memory_bytes")
    if not isinstance(memory, int) or isinstance(memory, bool) or memory <= 0:
        where = _at(path, key, "memory_bytes")
        raise ProfileError(f'{where}: [{key}] memory_bytes must be a positive integer or "host"')
    table["aliases"] = tuple(table.get("aliases", ()))
    try:
        return Device(name=key, **table)
    except TypeError as error:  # a required key is missing
        raise ProfileError(f"{path}: [{key}] {error}") from None


# --- architectures --------------------------------------------------------------------------


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
    raise _unknown("architecture", name, list(paths))


def _load_architecture(path: Path) -> Architecture:
    data = read_toml(path)
    unknown = sorted(set(data) - _CONFIG_FIELDS - _ARCHITECTURE_META)
    if unknown:
        known = sorted(_CONFIG_FIELDS | _ARCHITECTURE_META)
        raise _unknown("architecture key", unknown[0], known, _at(path, "", unknown[0]))
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


# --- run profiles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """The deployment shape the KV-memory analyzer plans for.

    ``context`` None means the model's max_positions; ``kv_dtype`` None means the model's
    compute dtype; ``prefill_chunk`` None means the whole context in one step.
    """

    device: str
    batch: int
    context: int | None
    kv_dtype: str | None
    utilization: float
    block_size: int
    tp: int
    prefill_chunk: int | None


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
        raise _unknown("profile", text, list_profiles())
    base = read_toml(default_path)
    _check_default(default_path, base)
    override = read_toml(path) if path.resolve() != default_path.resolve() else {}
    merged, sources = _merge(default_path, base, path, override)
    return Profile(
        name=str(merged.get("name", path.stem)),
        path=path,
        description=str(merged.get("description", "")),
        seed=_integer(path, "run", "seed", merged["run"]["seed"], 0),
        probes=dict(merged["probes"]),
        deployment=_deployment(path, merged["deployment"]),
        thresholds={a: {k: _value(v) for k, v in t.items()} for a, t in merged["thresholds"].items()},
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
                where = _at(path, f"thresholds.{analyzer}", key)
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
            raise _unknown("top-level key", key, sorted(_TOP_LEVEL), _at(path, "", key))
        if key in ("name", "description"):
            merged[key] = value
        elif key == "thresholds":
            _merge_thresholds(path, merged["thresholds"], sources, value)
        else:
            _merge_table(path, key, merged[key], value, typed=key != "deployment")
    return merged, sources


def _merge_table(path: Path, table: str, into: dict, values: Any, *, typed: bool) -> None:
    if not isinstance(values, dict):
        raise ProfileError(f"{_at(path, '', table)}: {table} must be a table")
    for key, value in values.items():
        if key not in into:
            raise _unknown(f"key in [{table}]", key, sorted(into), _at(path, table, key))
        if isinstance(value, dict) and (set(value) - {"value", "source"} or "value" not in value):
            raise ProfileError(f"{_at(path, table, key)}: [{table}] {key} must be a value or "
                               "{ value = ..., source = ... }")
        if typed and not _same_kind(_value(into[key]), _value(value)):
            kinds = {"int": "an integer", "float": "a number", "list": "a list", "str": "a string",
                     "bool": "true or false"}
            kind = type(_value(into[key])).__name__
            raise ProfileError(f"{_at(path, table, key)}: [{table}] {key} must be {kinds.get(kind, kind)}")
        into[key] = value


def _merge_thresholds(path: Path, into: dict, sources: dict, values: Any) -> None:
    if not isinstance(values, dict):
        raise ProfileError(f"{_at(path, '', 'thresholds')}: thresholds must be a table")
    for analyzer, table in values.items():
        if analyzer not in into:
            raise _unknown("analyzer in [thresholds]", analyzer, sorted(into), str(path))
        _merge_table(path, f"thresholds.{analyzer}", into[analyzer], table, typed=True)
        for key, entry in table.items():
            own = entry.get("source") if isinstance(entry, dict) else None
            sources[analyzer][key] = str(own or f"overridden in {path}")


def _integer(path: Path, table: str, key: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        where = _at(path, table, key)
        raise ProfileError(f"{where}: [{table}] {key} must be an integer >= {minimum}")
    return value


def _deployment(path: Path, table: dict[str, Any]) -> Deployment:
    """Check the deployment table; ``path`` is where overrides came from (for messages)."""
    context, chunk, kv_dtype = table["context"], table["prefill_chunk"], table["kv_dtype"]
    utilization = table["utilization"]
    if isinstance(utilization, bool) or not isinstance(utilization, int | float):
        utilization = -1.0  # reported below
    if not 0 < utilization <= 1:
        where = _at(path, "deployment", "utilization")
        raise ProfileError(f"{where}: utilization must be a number in (0, 1]")
    try:
        device = get_device(str(table["device"])).name
    except ProfileError as error:
        raise ProfileError(f"{_at(path, 'deployment', 'device')}: {error}") from None
    return Deployment(
        device=device,
        batch=_integer(path, "deployment", "batch", table["batch"], 1),
        context=None if context == "max" else _integer(path, "deployment", "context", context, 1),
        kv_dtype=None if kv_dtype == "auto" else str(kv_dtype),
        utilization=float(utilization),
        block_size=_integer(path, "deployment", "block_size", table["block_size"], 1),
        tp=_integer(path, "deployment", "tp", table["tp"], 1),
        prefill_chunk=None if chunk == "none" else _integer(path, "deployment", "prefill_chunk", chunk, 1),
    )
