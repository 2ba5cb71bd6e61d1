"""Progress inside a forward (recorders/progress.py) on a tiny random decoder: a tick per block,
throttled, output unchanged, hooks removed, and the time left worded for people."""

from __future__ import annotations

import pytest
import torch

from workbench.config import DecoderConfig
from workbench.model.decoder import HookedDecoder
from workbench.model.hooks import attached_hook_count
from workbench.recorders.progress import LayerTick, layer_progress

CONFIG = DecoderConfig(vocab_size=64, d_model=32, n_layers=4, n_heads=4, d_head=8, d_mlp=64, max_positions=512,
                       name="tiny")


@pytest.fixture(scope="module")
def model() -> HookedDecoder:
    torch.manual_seed(0)
    return HookedDecoder(CONFIG).eval()


def test_every_block_reports_and_the_output_is_unchanged(model):
    tokens = torch.randint(0, 64, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.hidden(tokens)
    ticks: list[LayerTick] = []
    with torch.no_grad(), layer_progress(model.blocks, ticks.append, min_interval_seconds=0.0):
        hidden = model.hidden(tokens)
        model.hidden(tokens)  # every forward inside the block reports
    assert torch.equal(hidden, reference)
    assert [tick.done for tick in ticks] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert all(tick.n_layers == 4 and tick.elapsed_seconds >= 0 for tick in ticks)
    assert attached_hook_count(model) == 0


def test_ticks_are_throttled_but_the_last_block_always_reports(model):
    ticks: list[LayerTick] = []
    with torch.no_grad(), layer_progress(model.blocks, ticks.append, min_interval_seconds=3600):
        model.hidden(torch.zeros(1, 8, dtype=torch.long))
    assert [tick.done for tick in ticks] == [4]


def test_hooks_removed_when_the_forward_raises(model):
    def explode(tick: LayerTick) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"), layer_progress(model.blocks, explode, 0.0):
        model.hidden(torch.zeros(1, 4, dtype=torch.long))
    assert attached_hook_count(model) == 0


@pytest.mark.parametrize(("done", "elapsed", "text"), [
    (10, 5.0, "layer 10/30, about 10 s left"),
    (1, 30.0, "layer 1/30, about 14 min left"),
    (15, 100.0, "layer 15/30, about 1 min 40 s left"),
    (3, 1200.0, "layer 3/30, about 3.0 h left"),
    (30, 9.0, "layer 30/30"),
])
def test_tick_describes_the_time_left(done, elapsed, text):
    tick = LayerTick(done=done, n_layers=30, elapsed_seconds=elapsed)
    assert tick.remaining_seconds == pytest.approx(elapsed / done * (30 - done))
    assert tick.describe() == text
