"""The memory guard: refuse a probe that cannot fit before allocating it, and explain one that did not."""

from __future__ import annotations

import torch

from workbench.analyzers.kv_memory import plan
from workbench.config import DecoderConfig
from workbench.errors import PlanError, RunError
from workbench.settings import get_device


def check_fits_in_memory(config: DecoderConfig | None, tokens: int, device: str, dtype: str, batch: int = 1,
                         label: str = "the model", setting: str = "--tokens") -> None:
    """Refuse, before allocating, a probe whose forward cannot fit in this host's memory.

    ``batch`` sequences of ``tokens``; ``label`` names the checkpoint and ``setting`` what asked
    for this size, for the message."""
    if device != "cpu" or config is None:
        return
    try:
        result = plan(config, get_device("cpu"), batch=batch, context=tokens, kv_dtype=dtype,
                      weights_dtype=dtype, prefill_chunk=None)
    except PlanError:
        return
    # The residual recorder keeps every layer's resid_post for the logit lens.
    lens_bytes = config.n_layers * tokens * batch * config.d_model * 4
    needed, usable = result.total_bytes + lens_bytes, result.device_bytes
    if result.fits and needed <= usable:
        return
    if result.weights_bytes >= usable:
        raise RunError(f"{label}: its weights alone need about {result.weights_bytes / 2**30:.1f} GiB in {dtype}, more "
                       f"than this host can give ({usable / 2**30:.1f} GiB usable)")
    per_token = (needed - result.weights_bytes) / (tokens * batch)  # bytes per token of one sequence
    largest = int((usable - result.weights_bytes) / per_token / batch)
    rows = f" x {batch:,} sequences" if batch > 1 else ""
    fits = (f"the largest that fits is about {largest:,} tokens" if largest >= 2
            else f"not even 2 tokens fit at {batch:,} sequences")
    raise RunError(f"{label}: a {tokens:,}-token probe{rows} ({setting}) needs about {needed / 2**30:.1f} GiB, more "
                   f"than this host can give ({usable / 2**30:.1f} GiB usable); {fits}")


def device_memory_bytes(device: str) -> int | None:
    """Total memory of a CUDA device (None for the CPU or when CUDA is absent)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)


def out_of_memory_error(config: DecoderConfig | None, tokens: int, device: str, dtype: str) -> RunError:
    """The message for a forward that ran out of device memory, with the largest length that fits."""
    memory = device_memory_bytes(device)
    hint = ""
    if memory is not None and config is not None:
        try:
            result = plan(config, memory, batch=1, context=tokens, kv_dtype=dtype, weights_dtype=dtype,
                          prefill_chunk=None)
            if result.max_context:
                hint = f"; the largest probe that fits is about {result.max_context:,} tokens (--tokens)"
        except PlanError:
            pass
    return RunError(f"out of memory on {device} with a {tokens:,}-token probe{hint}")
