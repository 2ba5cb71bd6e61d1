"""Weight files: safetensors (single or sharded) and PyTorch pickles read with weights_only."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from workbench.errors import CheckpointError
from workbench.loading.sources import first_line, read_json


def _refusal_detail(error: BaseException) -> str:
    """The line of torch's many-line weights_only refusal that says what it refused."""
    for line in str(error).splitlines():
        if "unsupported" in line.lower():
            return line.split("WeightsUnpickler error:")[-1].split(". Please")[0].strip()[:160]
    return first_line(error)[:160]


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file; truncation or corruption is a CheckpointError."""
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
    return state


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Tensors of a transformers folder: single or sharded safetensors, else a .bin pickle."""
    for index_name, read in (("model.safetensors.index.json", read_safetensors),
                             ("pytorch_model.bin.index.json", read_pickle_weights)):
        index = folder / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index}: no 'weight_map' of tensor names to shard files")
            tensors: dict[str, torch.Tensor] = {}
            for shard in sorted(set(map(str, weight_map.values()))):
                shard_path = folder / shard
                if not shard_path.is_file():
                    raise CheckpointError(f"{shard_path}: shard listed in {index.name} is missing")
                tensors.update(read(shard_path))
            return tensors
    single = folder / "model.safetensors"
    if single.is_file():
        return read_safetensors(single)
    others = sorted(folder.glob("*.safetensors"))
    if others:
        tensors = {}
        for other in others:
            tensors.update(read_safetensors(other))
        return tensors
    pickled = folder / "pytorch_model.bin"
    if pickled.is_file():
        return read_pickle_weights(pickled)
    raise CheckpointError(f"{folder}: no weights (model.safetensors or pytorch_model.bin) in it")
