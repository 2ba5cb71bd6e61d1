"""Building zoo members: train from a fixed seed and save a workbench checkpoint with its zoo.json."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.loading.native import save_checkpoint
from workbench.model.decoder import HookedDecoder
from workbench.zoo.recipe import ZooSpec
from workbench.zoo.specs import MEMBERS, _spec
from workbench.zoo.training import (
    _init_weights,
    _reset_routers,
    _train,
    _training_threads,
    _write_q_scale,
    _write_residual_scale,
)

ZOO_FILE = "zoo.json"
# Trained weights by everything that determines them: build_all shares one between members.
TrainedCache = dict[tuple[object, ...], tuple[dict[str, torch.Tensor], float]]


def _trained(spec: ZooSpec, steps: int, seed: int, cache: TrainedCache) -> tuple[HookedDecoder, float]:
    """``spec``'s model after training (from ``spec.start_from``'s trained weights when set),
    and its last batch loss. With a shared ``cache``, members that differ only in name and claim
    train once."""
    key = (spec.config.replace(name=""), spec.task, steps, spec.learning_rate, spec.warmup_steps,
           spec.init, spec.balance_loss, spec.start_from, spec.sink_head, spec.sink_mass, seed)
    base = None
    if spec.start_from is not None and key not in cache:
        base_spec = _spec(spec.start_from)
        base = _trained(base_spec, base_spec.steps, seed, cache)[0].state_dict()
    with _training_threads(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HookedDecoder(spec.config)
        if key in cache:
            state, final_loss = cache[key]
            model.load_state_dict(state)
            model.eval()
            return model, final_loss
        if base is not None:
            model.load_state_dict(base)
        else:
            _init_weights(model, spec.init)
        generator = torch.Generator(device="cpu").manual_seed(seed + 1)
        final_loss = _train(model, spec, generator, steps)
    cache[key] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, final_loss)
    return model, final_loss


def build(name: str, folder: str | os.PathLike, *, seed: int = 0, steps: int | None = None,
          cache: TrainedCache | None = None) -> Path:
    """Train member ``name`` and save it as the checkpoint folder ``folder/name``; return it.

    ``steps`` overrides the member's training steps (quick tests; the ground truth holds only
    for the default). The same seed gives the same weights on the same machine.
    """
    spec = _spec(name)
    steps = spec.steps if steps is None else steps
    start = time.perf_counter()
    model, final_loss = _trained(spec, steps, seed, {} if cache is None else cache)
    if spec.q_scale != 1.0:  # after training (and outside the cache: twins share the trained weights)
        _write_q_scale(model, spec.q_scale, spec.q_scale_heads, spec.q_scale_layers)
    if spec.claim:
        model.config = model.config.replace(**spec.claim)
        model.reset_buffers()
    if spec.reset_router:  # after training, like q_scale (outside the cache)
        _reset_routers(model)
    if spec.residual_scale != 1.0:
        _write_residual_scale(model, spec.residual_scale)
    if spec.stored_dtype != "float32":
        model.to(getattr(torch, spec.stored_dtype))
        model.config = model.config.replace(dtype=spec.stored_dtype)
    path = save_checkpoint(model, Path(folder) / name)
    provenance = {
        "member": name,
        "seed": seed,
        "steps": steps,
        "last_batch_loss": round(final_loss, 4),
        "build_seconds": round(time.perf_counter() - start, 3),
        "task": repr(spec.task),
        "healthy_twin": spec.healthy_twin,
        "description": spec.description,
    }
    (path / ZOO_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class BuildProgress:
    """What :func:`build_all` reports: a member about to train, or (``seconds`` set) just built.

    ``str()`` of it is a one-line status, e.g. "training alibi (7/7)".
    """

    name: str
    index: int  # 1-based position in this build
    total: int
    seconds: float | None = None  # wall-clock build time, once built
    path: Path | None = None  # the checkpoint folder, once built

    def __str__(self) -> str:
        if self.seconds is None:
            return f"training {self.name} ({self.index}/{self.total})"
        return f"built {self.name} in {self.seconds:.1f} s ({self.index}/{self.total})"


def build_all(
    folder: str | os.PathLike,
    names: list[str] | None = None,
    progress: Callable[[BuildProgress], None] | None = None,
    *,
    seed: int = 0,
) -> dict[str, Path]:
    """Build ``names`` (default: every member, about 2 CPU-minutes) as ``folder/<name>``.

    Unknown names raise KeyError before anything is trained. ``progress`` is called before and
    after each member.
    """
    names = list(MEMBERS) if names is None else [_spec(name).name for name in names]
    paths = {}
    cache: TrainedCache = {}  # rope-short, rope-overclaimed, ... train once
    for index, name in enumerate(names, start=1):
        if progress is not None:
            progress(BuildProgress(name, index, len(names)))
        start = time.perf_counter()
        paths[name] = build(name, folder, seed=seed, cache=cache)
        if progress is not None:
            progress(BuildProgress(name, index, len(names), time.perf_counter() - start, paths[name]))
    return paths
