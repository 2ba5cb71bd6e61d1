"""The memory guard: refuse a probe that cannot fit before allocating it, and explain one that did not.

The refusal names the largest probe that fits and, once the model is loaded, how long a forward
of that length would take on this host (:func:`with_time_estimate`), so a user can decide
whether to run it. Both plan the workbench's own forward (the ``workbench`` engine table: every
position at once, fp32 logits for all of them), not a serving engine."""

from __future__ import annotations

import torch

from workbench.config import DecoderConfig
from workbench.errors import PlanError, RunError
from workbench.measurements.calibration import estimate_forward_seconds
from workbench.memory.planner import plan
from workbench.settings import get_device
from workbench.units import format_duration


class ProbeTooLong(RunError):
    """A probe that does not fit in this host's memory; ``largest_tokens`` per sequence fits at
    ``batch`` sequences (0: none does)."""

    def __init__(self, message: str, largest_tokens: int, batch: int = 1) -> None:
        super().__init__(message)
        self.largest_tokens, self.batch = largest_tokens, batch


def with_time_estimate(error: ProbeTooLong, model: torch.nn.Module) -> RunError:
    """``error`` with how long a forward of its largest fitting length would take on this host,
    from short calibration forwards of ``model`` (the loaded decoder)."""
    estimate = estimate_forward_seconds(model, error.largest_tokens, batch=error.batch)
    return RunError(f"{error}; a {error.largest_tokens:,}-token forward would take about "
                    f"{format_duration(estimate.seconds)} here (extrapolated from {estimate.calibration_tokens}- "
                    f"and {2 * estimate.calibration_tokens}-token forwards timed now)")


def check_fits_in_memory(config: DecoderConfig | None, tokens: int, device: str, dtype: str, batch: int = 1,
                         label: str = "the model", setting: str = "--tokens") -> None:
    """Refuse, before allocating, a probe whose forward cannot fit in this host's memory.

    ``batch`` sequences of ``tokens``; ``label`` names the checkpoint and ``setting`` what asked
    for this size, for the message. Too long: :class:`ProbeTooLong`, naming the largest length
    that fits."""
    if device != "cpu" or config is None:
        return
    try:
        result = plan(config, get_device("cpu"), batch=batch, context=tokens, kv_dtype=dtype,
                      weights_dtype=dtype, engine="workbench", allow_long_context=True)
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
    raise ProbeTooLong(f"{label}: a {tokens:,}-token probe{rows} ({setting}) needs about {needed / 2**30:.1f} GiB, "
                       f"more than this host can give ({usable / 2**30:.1f} GiB usable); {fits}",
                       largest if largest >= 2 else 0, batch)


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
                          engine="workbench", allow_long_context=True)
            if result.max_context:
                hint = f"; the largest probe that fits is about {result.max_context:,} tokens (--tokens)"
        except PlanError:
            pass
    return RunError(f"out of memory on {device} with a {tokens:,}-token probe{hint}")
