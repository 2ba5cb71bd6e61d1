"""The calibrated forward-time estimate (measurements/calibration.py) that the memory guard's
refusal quotes: overhead plus FLOP-proportional time, fitted on two short forwards."""

from __future__ import annotations

import time

import pytest
import torch

from workbench.config import DecoderConfig
from workbench.measurements.calibration import estimate_forward_seconds
from workbench.measurements.flops import forward_flops
from workbench.model.decoder import HookedDecoder

CONFIG = DecoderConfig(vocab_size=64, d_model=32, n_layers=4, n_heads=4, d_head=8, d_mlp=64, max_positions=512,
                       name="tiny")


@pytest.fixture(scope="module")
def model() -> HookedDecoder:
    torch.manual_seed(0)
    return HookedDecoder(CONFIG).eval()


def test_estimate_is_overhead_plus_flops(model):
    estimate = estimate_forward_seconds(model, tokens=512, calibration_tokens=64)
    assert estimate.calibration_tokens == 64 and all(t > 0 for t in estimate.calibration_seconds)
    assert estimate.overhead_seconds >= 0 and estimate.seconds_per_flop > 0
    expected = estimate.overhead_seconds + estimate.seconds_per_flop * forward_flops(CONFIG, 1, 512).total
    assert estimate.seconds == pytest.approx(expected, rel=1e-12)
    # the fit reproduces its own longer calibration point unless it fell back to pure scaling
    if estimate.overhead_seconds > 0:
        longer = estimate.overhead_seconds + estimate.seconds_per_flop * forward_flops(CONFIG, 1, 128).total
        assert longer == pytest.approx(estimate.calibration_seconds[1], rel=1e-9)


def test_estimate_is_of_the_right_order():
    """The estimate against a measured forward at 4x the longer calibration length, on a model
    whose forward is arithmetic rather than Python overhead (as SmolLM2's is at the lengths the
    guard talks about): within a factor of 3 either way. A shared 2-core CPU is noisy; the claim is
    the order of magnitude, which is what a user deciding whether to wait needs."""
    torch.manual_seed(0)
    config = CONFIG.replace(d_model=256, n_heads=4, d_head=64, d_mlp=1024, max_positions=2048)
    wide = HookedDecoder(config).eval()
    estimate = estimate_forward_seconds(wide, tokens=1024, calibration_tokens=128)
    tokens = torch.randint(0, 64, (1, 1024), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        wide.hidden(tokens)
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            wide.hidden(tokens)
            runs.append(time.perf_counter() - start)
    measured = sorted(runs)[1]
    assert measured / 3 < estimate.seconds < measured * 3, (estimate, measured)
