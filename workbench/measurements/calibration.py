"""How long a forward of N tokens would take here, from two short forwards timed now.

The memory guard names the largest probe that fits; a user deciding whether to run it needs to
know whether that is a minute or an hour on this machine. :func:`estimate_forward_seconds` times
forwards of ``L`` and ``2L`` tokens (median of three each, after an untimed warm-up that pays for
allocation) and fits ``seconds = overhead + seconds_per_flop x FLOPs``, with FLOPs from
:func:`workbench.measurements.flops.forward_flops`, which counts attention's quadratic term: the fixed cost
of a forward (Python, kernel launches) does not grow with N, the arithmetic grows faster than
linearly. It is an estimate (memory bandwidth and cache effects at long context are not
modelled); callers say so.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from torch import nn

from workbench.measurements.flops import forward_flops
from workbench.measurements.timing import timed_runs

CALIBRATION_TOKENS = 128


@dataclass(frozen=True)
class ForwardEstimate:
    """``seconds`` for a ``tokens``-long forward, from forwards of ``calibration_tokens`` and twice
    that, measured at ``calibration_seconds``."""

    tokens: int
    seconds: float
    calibration_tokens: int
    calibration_seconds: tuple[float, float]
    overhead_seconds: float
    seconds_per_flop: float


def _timed(model: nn.Module, ids_BT: torch.Tensor, repeats: int = 3) -> float:
    def run() -> None:
        with torch.no_grad():
            model.hidden(ids_BT)

    return statistics.median(timed_runs(run, ids_BT.device, repeats))


def estimate_forward_seconds(model: nn.Module, tokens: int, calibration_tokens: int = CALIBRATION_TOKENS,
                             batch: int = 1) -> ForwardEstimate:
    """Time short forwards of ``model`` (a HookedDecoder: ``model.hidden`` and ``model.config``)
    and extrapolate to ``tokens`` (see the module docstring)."""
    config = model.config
    short = max(2, min(calibration_tokens, config.max_positions // 2, max(2, tokens // 2)))
    lengths = (short, 2 * short)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, config.vocab_size, (batch, n), generator=generator).to(device) for n in lengths]
    _timed(model, inputs[1], repeats=1)  # warm-up: allocation, kernel choice
    measured = tuple(_timed(model, ids_BT) for ids_BT in inputs)
    flops = [forward_flops(config, batch, n).total for n in lengths]
    per_flop = (measured[1] - measured[0]) / (flops[1] - flops[0])
    if per_flop <= 0:  # noise swamped the difference: attribute everything to the arithmetic
        per_flop, overhead = measured[1] / flops[1], 0.0
    else:
        overhead = max(0.0, measured[0] - per_flop * flops[0])
    seconds = overhead + per_flop * forward_flops(config, batch, tokens).total
    return ForwardEstimate(tokens=tokens, seconds=seconds, calibration_tokens=short,
                           calibration_seconds=measured, overhead_seconds=overhead, seconds_per_flop=per_flop)
