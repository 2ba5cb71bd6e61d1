"""Progress inside a forward: which block is done, and about how long the rest will take.

A 16k-token forward of a 30-layer model takes minutes on a CPU; a spinner alone does not say
whether it is nearly done. :func:`layer_progress` attaches a forward hook to every block (and a
pre-hook to the first, to start the clock) and reports a :class:`LayerTick` after each block, at
most every ``min_interval_seconds`` (and always after the last). The estimate of the time left
assumes the blocks cost the same, which holds for a decoder's identical blocks (MoE routing
aside). Hooks are removed on exit, whatever happens inside.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from workbench.units import format_duration


@dataclass(frozen=True)
class LayerTick:
    """``done`` of ``n_layers`` blocks of the current forward have finished, ``elapsed_seconds``
    after its first block started."""

    done: int
    n_layers: int
    elapsed_seconds: float

    @property
    def remaining_seconds(self) -> float:
        """The time left in this forward at the pace so far."""
        return self.elapsed_seconds / self.done * (self.n_layers - self.done)

    def describe(self) -> str:
        """``layer 12/30, about 8 s left`` (the forward's own progress, for a progress line)."""
        if self.done >= self.n_layers:
            return f"layer {self.done}/{self.n_layers}"
        return f"layer {self.done}/{self.n_layers}, about {format_duration(self.remaining_seconds)} left"


OnTick = Callable[[LayerTick], None]


@contextmanager
def layer_progress(blocks: nn.ModuleList, on_tick: OnTick | None,
                   min_interval_seconds: float = 0.5) -> Iterator[None]:
    """Report a :class:`LayerTick` to ``on_tick`` as each of ``blocks`` finishes, in every forward
    run inside the block. ``on_tick`` None: nothing is attached."""
    if on_tick is None or len(blocks) == 0:
        yield
        return
    n_layers = len(blocks)
    clock = {"start": 0.0, "last": 0.0}

    def start(module: nn.Module, args: object) -> None:
        clock["start"] = clock["last"] = time.perf_counter()

    def finished(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            now = time.perf_counter()
            if index + 1 < n_layers and now - clock["last"] < min_interval_seconds:
                return
            clock["last"] = now
            on_tick(LayerTick(done=index + 1, n_layers=n_layers, elapsed_seconds=now - clock["start"]))

        return hook

    handles = [blocks[0].register_forward_pre_hook(start)]
    try:
        handles += [block.register_forward_hook(finished(index)) for index, block in enumerate(blocks)]
        yield
    finally:
        for handle in handles:
            handle.remove()
