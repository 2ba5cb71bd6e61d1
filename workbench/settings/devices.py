"""The device catalog (profiles/devices.toml): memory, bandwidth and peak FLOP/s of accelerators."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import ProfileError
from workbench.settings.toml import at, profiles_dir, read_toml, unknown_name


@dataclass(frozen=True)
class Device:
    """One accelerator (or this host's CPU) from devices.toml. See that file for units."""

    name: str
    memory_bytes: int
    memory_stated: str
    source: str
    vendor: str = ""
    cuda_memory_bytes: int | None = None  # what CUDA reports as the total; None: not known
    cuda_memory_source: str = ""
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
        raise unknown_name("device", name, list(tables))
    key = by_name[wanted]
    table = dict(tables[key])
    unknown = sorted(set(table) - _DEVICE_FIELDS)
    if unknown:
        raise unknown_name("device key", unknown[0], sorted(_DEVICE_FIELDS), at(path, key, unknown[0]))
    if table.get("memory_bytes") == "host":
        table["memory_bytes"] = host_memory_bytes()
    memory = table.get("memory_bytes")
    if not isinstance(memory, int) or isinstance(memory, bool) or memory <= 0:
        where = at(path, key, "memory_bytes")
        raise ProfileError(f'{where}: [{key}] memory_bytes must be a positive integer or "host"')
    table["aliases"] = tuple(table.get("aliases", ()))
    try:
        return Device(name=key, **table)
    except TypeError as error:  # a required key is missing
        raise ProfileError(f"{path}: [{key}] {error}") from None
