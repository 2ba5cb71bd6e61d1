"""The memory guard: refuse a probe that cannot fit before allocating it, and explain one that did not."""

from __future__ import annotations

import torch

from workbench.analyzers.kv_memory import plan
from workbench.config import DecoderConfig
from workbench.errors import PlanError, RunError
from workbench.settings import get_device


def check_fits_in_memory(config: DecoderConfig | None, tokens: int, device: str, dtype: str) -> None:
    """Refuse, before allocating, a probe whose forward cannot fit in this host's memory."""
    if device != "cpu" or config is None:
        return
    try:
        result = plan(config, get_device("cpu"), batch=1, context=tokens, kv_dtype=dtype,
                      weights_dtype=dtype, prefill_chunk=None)
    except PlanError:
        return
    # The residual recorder keeps every layer's resid_post for the logit lens.
    lens_bytes = config.n_layers * tokens * config.d_model * 4
    if not result.fits or result.total_bytes + lens_bytes > result.device_bytes:
        per_token = (result.total_bytes - result.weights_bytes) / tokens + config.n_layers * config.d_model * 4
        largest = max(0, int((result.device_bytes - result.weights_bytes) / per_token))
        raise RunError(
            f"a {tokens:,}-token probe needs about {(result.total_bytes + lens_bytes) / 2**30:.1f} GiB, more than this "
            f"host can give ({result.device_bytes / 2**30:.1f} GiB usable); the largest that fits is "
            f"about {largest:,} tokens" if largest else "this model does not fit in this host's memory"
        )


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
