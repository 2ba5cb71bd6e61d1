"""Weight files: safetensors (single or sharded) and PyTorch pickles read with weights_only."""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from workbench.errors import CheckpointError
from workbench.loading.sources import MAX_JSON_BYTES, check_regular_file, first_line, read_json

# safetensors dtype codes: (torch name, bytes per element); weights may use the floating ones.
SAFETENSORS_DTYPES = {
    "BOOL": ("bool", 1), "U8": ("uint8", 1), "I8": ("int8", 1), "F8_E5M2": ("float8_e5m2", 1),
    "F8_E4M3": ("float8_e4m3fn", 1), "I16": ("int16", 2), "U16": ("uint16", 2), "F16": ("float16", 2),
    "BF16": ("bfloat16", 2), "I32": ("int32", 4), "U32": ("uint32", 4), "F32": ("float32", 4),
    "C64": ("complex64", 8), "I64": ("int64", 8), "U64": ("uint64", 8), "F64": ("float64", 8),
}
SAFETENSORS_FLOATS = {"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"}


def _refusal_detail(error: BaseException) -> str:
    """The line of torch's many-line weights_only refusal that says what it refused."""
    for line in str(error).splitlines():
        if "unsupported" in line.lower():
            return line.split("WeightsUnpickler error:")[-1].split(". Please")[0].strip()[:160]
    return first_line(error)[:160]


def read_safetensors_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """{tensor name: (safetensors dtype code, shape)} of a .safetensors file, checked against
    the file without reading any tensor data: the header length, its JSON, every entry's dtype
    (floating point only: weights), shape and byte range. Any problem is a CheckpointError."""
    size = check_regular_file(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: truncated or corrupted safetensors file (no header)")
        header_bytes = int.from_bytes(prefix, "little")
        if header_bytes > min(size - 8, MAX_JSON_BYTES):
            raise CheckpointError(f"{path}: truncated or corrupted safetensors file (header length "
                                  f"{header_bytes:,} does not fit in the file's {size:,} bytes)")
        raw = handle.read(header_bytes)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: truncated or corrupted safetensors file (the header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: truncated or corrupted safetensors file (the header is not a JSON object)")
    data_bytes = size - 8 - header_bytes
    return {name: _header_entry(path, name, entry, data_bytes) for name, entry in header.items()
            if name != "__metadata__"}


def _header_entry(path: Path, name: str, entry: Any, data_bytes: int) -> tuple[str, list[int]]:
    """One checked header entry: (dtype code, shape)."""
    corrupt = f"{path}: truncated or corrupted safetensors file"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{corrupt} (entry {name!r} is not an object)")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{corrupt} (tensor {name} has unknown dtype {dtype!r})")
    if dtype not in SAFETENSORS_FLOATS:
        floats = ", ".join(sorted(SAFETENSORS_DTYPES[code][0] for code in SAFETENSORS_FLOATS))
        raise CheckpointError(f"{path}: tensor {name} is stored as {SAFETENSORS_DTYPES[dtype][0]}; weights must be "
                              f"floating point ({floats})")
    if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise CheckpointError(f"{corrupt} (tensor {name} has shape {shape!r})")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_bytes
            and offsets[1] - offsets[0] == math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]):
        raise CheckpointError(f"{corrupt} (tensor {name}'s bytes {offsets!r} do not match its shape or the file)")
    return dtype, shape


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file (its header checked first, see
    :func:`read_safetensors_header`); truncation or corruption is a CheckpointError."""
    read_safetensors_header(path)
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path}: truncated or corrupted safetensors file ({first_line(error)})") from None
    return tensors


def read_pickle_weights(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch pickle, loaded with ``weights_only=True``: code inside it is never run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused to load: the pickle holds more than plain tensors and was not "
            f"executed ({_refusal_detail(error)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: truncated or corrupted PyTorch file ({first_line(error)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: tensor {name} is stored as {str(tensor.dtype).removeprefix('torch.')}; "
                                  "weights must be floating point")
    return state


def shard_path(folder: Path, index: Path, shard: str) -> Path:
    """The file a sharded index names, refused when it leaves the checkpoint folder."""
    candidate = folder / shard
    if Path(shard).is_absolute() or not candidate.resolve().is_relative_to(folder.resolve()):
        raise CheckpointError(f"{index}: shard {shard!r} is outside the checkpoint folder; refused")
    return candidate


def check_weight_files(folder: Path) -> None:
    """Check a transformers folder's weight files without reading tensor data: every
    safetensors header, every shard path inside the folder, every file a regular file. For
    loaders that hand the folder to another library (the nnsight backend)."""
    for index in (folder / "model.safetensors.index.json", folder / "pytorch_model.bin.index.json"):
        if index.exists():
            weight_map = read_json(index).get("weight_map")
            if isinstance(weight_map, dict):
                for shard in set(map(str, weight_map.values())):
                    shard_path(folder, index, shard)
    for file in sorted(folder.glob("*.safetensors")):
        read_safetensors_header(file)
    for file in sorted(folder.glob("*.bin")):
        check_regular_file(file)


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Tensors of a transformers folder: single or sharded safetensors, else a .bin pickle."""
    for index_name, read in (("model.safetensors.index.json", read_safetensors),
                             ("pytorch_model.bin.index.json", read_pickle_weights)):
        index = folder / index_name
        if index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index}: no 'weight_map' of tensor names to shard files")
            tensors: dict[str, torch.Tensor] = {}
            shards = [shard_path(folder, index, shard) for shard in sorted(set(map(str, weight_map.values())))]
            for shard in shards:
                if not shard.exists():
                    raise CheckpointError(f"{shard}: shard listed in {index.name} is missing")
                tensors.update(read(shard))
            return tensors
    single = folder / "model.safetensors"
    if single.exists():
        return read_safetensors(single)
    others = sorted(folder.glob("*.safetensors"))
    if others:
        tensors = {}
        for other in others:
            tensors.update(read_safetensors(other))
        return tensors
    pickled = folder / "pytorch_model.bin"
    if pickled.exists():
        check_regular_file(pickled)
        return read_pickle_weights(pickled)
    raise CheckpointError(f"{folder}: no weights (model.safetensors or pytorch_model.bin) in it")
