"""Reading the shipped TOML data: where it is, and errors that name the file and line."""

from __future__ import annotations

import difflib
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

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
        if path.exists() and not path.is_file():
            raise ProfileError(f"{path}: not a regular file")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ProfileError(f"{path}: not UTF-8 text (byte {error.start})") from None
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


def at(path: Path, table: str = "", key: str | None = None) -> str:
    line = _key_line(path, table, key) if key is not None else None
    return f"{path}:{line}" if line else str(path)


def unknown_name(kind: str, name: str, known: list[str], where: str = "") -> ProfileError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    prefix = f"{where}: " if where else ""
    return ProfileError(f"{prefix}unknown {kind} {name!r}{hint} (known: {', '.join(known)})")
