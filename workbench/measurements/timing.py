"""Timing recorder: wall time, per-op and per-sublayer profile of a forward, and its traces.

:func:`profile_forward` times a forward the gpt-fast way (warm-up runs discarded, device sync
before and after the timer), then runs it again under ``torch.profiler`` with a named range
around every block and sublayer, added through forward (pre-)hooks so the model is not edited::

    blocks.3               the whole block (norms, residual adds and hook points included)
    blocks.3.attn          attention
    blocks.3.mlp           the dense MLP or the MoE layer (router and experts included)
    blocks.3.mlp.router    the MoE router's linear layer

It returns a :class:`TimingRecord` and, when ``out_dir`` is given, writes one trace of the
profiled steps::

    out_dir/trace/<run_name>/<worker>.<ns>.pt.trace.json   tensorboard --logdir out_dir/trace,
                                                          and Perfetto / chrome://tracing as it is

torch-tb-profiler names a run after the folder holding its ``*.pt.trace.json`` files, so each run
gets its own folder under ``trace/``; the same file is a plain Chrome trace, so it is written once
(``chrome_trace`` names it). Profiling again under the same run name adds another span to that
run rather than replacing it.

Two clocks, never mixed: ``wall_seconds`` is the median of at least three forwards timed without
the profiler, the number to quote; the breakdown (``components``, ``top_ops``) is profiled time,
which includes the profiler's own overhead, and its parts add up to the profiled forward
(``totals.forward_us``), never more. On CUDA the ranges are CPU-side: kernels launched inside a
range may run after it closes, so the component split is indicative there, while the op table
carries device time from the kernels themselves.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

from workbench.config import DecoderConfig
from workbench.measurements.flops import forward_flops

ForwardFn = Callable[[nn.Module, torch.Tensor], Any]

FORWARD_RANGE = "workbench.forward"  # wraps each profiled forward call
_RANGE_PATTERN = re.compile(r"^blocks\.(\d+)(\.attn|\.mlp|\.mlp\.router)?$")
_STEP_PREFIX = "ProfilerStep"  # "ProfilerStep#3" in events, "ProfilerStep*" once averaged


@dataclass
class TimingRecord:
    """What one :func:`profile_forward` call measured. Times are per forward call.

    ``top_ops``: aten ops by self CPU time, averaged over the profiled steps (``calls`` too).
    ``components``: ``per_layer`` rows of ``{layer, mlp_kind, attn_us, mlp_us, router_us,
    other_us, block_us}`` where ``mlp_us`` excludes the router and ``other_us`` is the block minus
    attention and the whole MLP/MoE; ``totals`` sums those over layers and adds ``forward_us``
    (the whole profiled forward) and ``outside_blocks_us`` (embedding, final norm, unembedding)."""

    run_name: str
    device: str
    batch: int
    seq_len: int
    warmup: int
    steps: int  # forwards timed without the profiler
    wall_seconds: float  # median of ``steps`` timed forwards, without the profiler
    wall_seconds_runs: list[float]
    profiled_wall_seconds: float  # mean wall time of one profiled forward (profiler overhead in)
    top_ops: list[dict[str, Any]]
    components: dict[str, Any]
    flops: int | None  # analytic, workbench.measurements.flops.forward_flops; None without a DecoderConfig
    flops_breakdown: dict[str, int] | None
    achieved_flops_per_second: float | None
    profiled_steps: int = 1  # forwards recorded under the profiler (the breakdown averages them)
    peak_flops: float | None = None
    fraction_of_peak: float | None = None
    out_dir: Path | None = None
    trace_dir: Path | None = None  # the tensorboard run folder
    tensorboard_traces: list[Path] = field(default_factory=list)
    chrome_trace: Path | None = None

    def _path(self, path: Path | None) -> str | None:
        if path is None:
            return None
        if self.out_dir is not None:
            try:
                return Path(path).relative_to(self.out_dir).as_posix()
            except ValueError:
                pass
        return str(path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; paths relative to ``out_dir`` where possible."""
        return {
            "run_name": self.run_name,
            "device": self.device,
            "batch": self.batch,
            "seq_len": self.seq_len,
            "warmup": self.warmup,
            "steps": self.steps,
            "profiled_steps": self.profiled_steps,
            "wall_seconds": self.wall_seconds,
            "wall_seconds_runs": list(self.wall_seconds_runs),
            "profiled_wall_seconds": self.profiled_wall_seconds,
            "top_ops": [dict(op) for op in self.top_ops],
            "components": self.components,
            "flops": self.flops,
            "flops_breakdown": None if self.flops_breakdown is None else dict(self.flops_breakdown),
            "achieved_flops_per_second": self.achieved_flops_per_second,
            "peak_flops": self.peak_flops,
            "fraction_of_peak": self.fraction_of_peak,
            "trace_dir": self._path(self.trace_dir),
            "tensorboard_traces": [self._path(path) for path in self.tensorboard_traces],
            "chrome_trace": self._path(self.chrome_trace),
        }


def _default_forward(model: nn.Module, input_ids: torch.Tensor) -> Any:
    with torch.no_grad():
        return model(input_ids)


def _model_device(model: nn.Module, input_ids: torch.Tensor) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else input_ids.device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def range_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules that get a profiler range: ``blocks.{l}`` and its attn, mlp, mlp.router."""
    return {name: module for name, module in model.named_modules() if _RANGE_PATTERN.match(name)}


KINETO_NOISE = re.compile(r"^USDT:\S+ \S+ \d+:\d+ \w+\.cpp:\d+\] profiler_(start|stop)\s*$")


@contextmanager
def quiet_kineto() -> Iterator[None]:
    """Keep the profiler's native "USDT: ... profiler_start/stop" lines out of the terminal.

    Kineto writes them to the process's stderr (file descriptor 2), below Python; while the
    block runs, fd 2 goes to a temporary file, and everything in it but those lines is written
    back to stderr afterwards, so no warning or error is lost.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr is not a file (captured, notebook)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if not KINETO_NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@contextmanager
def profiler_ranges(model: nn.Module) -> Iterator[list[str]]:
    """Open a ``record_function`` range named after each module in :func:`range_modules` while it
    runs. Yields the range names; removes every hook (and closes ranges a raising forward left
    open) on exit."""
    modules = range_modules(model)
    open_ranges: list[record_function] = []
    handles = []

    def enter(name: str) -> Callable[..., None]:
        def pre_hook(module: nn.Module, args: Any) -> None:
            rng = record_function(name)
            rng.__enter__()
            open_ranges.append(rng)

        return pre_hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        # Modules nest strictly (a router finishes before its MoE does), so the innermost open
        # range is this module's.
        open_ranges.pop().__exit__(None, None, None)

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
        yield list(modules)
    finally:
        for handle in handles:
            handle.remove()
        while open_ranges:
            open_ranges.pop().__exit__(None, None, None)


def timed_runs(run: Callable[[], Any], device: torch.device, count: int) -> list[float]:
    """Wall seconds of ``count`` calls of ``run``, each between device synchronisations."""
    seconds = []
    for _ in range(count):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def _top_ops(
    events: Any, steps: int, limit: int, exclude: set[str], with_device: bool
) -> list[dict[str, Any]]:
    rows = []
    for avg in events.key_averages():
        if avg.key in exclude or avg.key.startswith(_STEP_PREFIX):
            continue
        calls = avg.count / steps
        row: dict[str, Any] = {
            "name": avg.key,
            "calls": int(calls) if calls.is_integer() else calls,
            "self_cpu_us": avg.self_cpu_time_total / steps,
            "cpu_total_us": avg.cpu_time_total / steps,
        }
        if with_device:
            row["self_cuda_us"] = avg.self_device_time_total / steps
            row["cuda_total_us"] = avg.device_time_total / steps
        rows.append(row)
    rows.sort(key=lambda row: row["self_cpu_us"], reverse=True)
    return rows[:limit]


def _range_durations(events: Any, names: set[str], steps: int) -> dict[str, float]:
    """Per-forward CPU microseconds inside each named range (summed over its occurrences)."""
    durations = dict.fromkeys(names, 0.0)
    for event in events:
        if event.name in durations and event.device_type == torch.autograd.DeviceType.CPU:
            durations[event.name] += event.time_range.elapsed_us()
    return {name: us / steps for name, us in durations.items()}


def _components(durations: dict[str, float]) -> dict[str, Any]:
    layers = sorted({int(m.group(1)) for name in durations if (m := _RANGE_PATTERN.match(name))})
    rows = []
    for layer in layers:
        prefix = f"blocks.{layer}"
        block = durations.get(prefix, 0.0)
        attn = durations.get(f"{prefix}.attn", 0.0)
        mlp_inclusive = durations.get(f"{prefix}.mlp", 0.0)
        router = durations.get(f"{prefix}.mlp.router", 0.0)
        is_moe = f"{prefix}.mlp.router" in durations
        rows.append(
            {
                "layer": layer,
                "mlp_kind": "moe" if is_moe else "dense",
                "attn_us": attn,
                "mlp_us": mlp_inclusive - router,
                "router_us": router,
                # The ranges nest (forward > block > attn, mlp > router), so every part fits in its
                # whole; a microsecond of clock jitter at a boundary is clamped, not shown negative.
                "other_us": max(0.0, block - attn - mlp_inclusive),
                "block_us": block,
            }
        )
    totals = {
        key: sum(row[key] for row in rows)
        for key in ("attn_us", "mlp_us", "router_us", "other_us", "block_us")
    }
    totals["forward_us"] = max(durations.get(FORWARD_RANGE, 0.0), totals["block_us"])
    totals["outside_blocks_us"] = totals["forward_us"] - totals["block_us"]
    return {"per_layer": rows, "totals": totals}


def profile_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    out_dir: Path | None,
    run_name: str,
    warmup: int = 1,
    steps: int = 3,
    profiled_steps: int = 1,
    peak_flops: float | None = None,
    forward: ForwardFn | None = None,
    top_ops: int = 20,
) -> TimingRecord:
    """Time and profile ``forward(model, input_ids)`` (default: ``model(input_ids)`` without grad).

    ``warmup`` runs (at least one; the first run pays for allocation and kernel selection) are
    discarded before ``steps`` timed runs without the profiler (their median is ``wall_seconds``;
    three or more make it a median), then before ``profiled_steps`` runs under it (one keeps the
    trace small; the breakdown is their mean). The
    analytic FLOP count assumes one full forward of ``input_ids`` with an empty cache; a custom
    ``forward`` that does something else should read ``wall_seconds`` and ignore ``flops``.
    ``peak_flops`` (FLOP/s of the device) gives ``fraction_of_peak``.
    """
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 (the first run is discarded), got {warmup}")
    if steps < 1 or profiled_steps < 1:
        raise ValueError(f"steps and profiled_steps must be >= 1, got {steps} and {profiled_steps}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, pos], got shape {tuple(input_ids.shape)}")
    forward = forward or _default_forward
    device = _model_device(model, input_ids)
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])

    def run() -> Any:
        return forward(model, input_ids)

    timed_runs(run, device, warmup)
    wall_runs = timed_runs(run, device, steps)

    trace_dir = None
    written_before: set[Path] = set()
    if out_dir is not None:
        out_dir = Path(out_dir)
        trace_dir = out_dir / "trace" / run_name
        trace_dir.mkdir(parents=True, exist_ok=True)
        written_before = set(trace_dir.glob("*.pt.trace.json"))
    captured: dict[str, Any] = {}

    def on_trace_ready(prof: profile) -> None:
        captured["events"] = prof.events()
        if trace_dir is not None:
            tensorboard_trace_handler(str(trace_dir))(prof)
            captured["tensorboard_traces"] = sorted(set(trace_dir.glob("*.pt.trace.json")) - written_before)

    profiled_seconds = []
    with profiler_ranges(model) as names, quiet_kineto():
        with profile(
            activities=activities,
            schedule=schedule(wait=0, warmup=warmup, active=profiled_steps, repeat=1),
            on_trace_ready=on_trace_ready,
        ) as prof:
            for step in range(warmup + profiled_steps):
                _sync(device)
                start = time.perf_counter()
                with record_function(FORWARD_RANGE):
                    run()
                _sync(device)
                if step >= warmup:
                    profiled_seconds.append(time.perf_counter() - start)
                prof.step()
    if "events" not in captured:
        raise RuntimeError("the profiler produced no trace (schedule never reached its active steps)")
    events = captured["events"]
    traces = captured.get("tensorboard_traces", [])
    chrome_trace = traces[-1] if traces else None  # a *.pt.trace.json is a Chrome trace too

    durations = _range_durations(events, set(names) | {FORWARD_RANGE}, profiled_steps)
    config = getattr(model, "config", None)
    flop_count = None
    if isinstance(config, DecoderConfig):
        flop_count = forward_flops(config, input_ids.shape[0], input_ids.shape[1])
    wall_seconds = statistics.median(wall_runs)
    achieved = flop_count.total / wall_seconds if flop_count is not None and wall_seconds > 0 else None
    fraction = achieved / peak_flops if achieved is not None and peak_flops else None
    return TimingRecord(
        run_name=run_name,
        device=str(device),
        batch=input_ids.shape[0],
        seq_len=input_ids.shape[1],
        warmup=warmup,
        steps=steps,
        profiled_steps=profiled_steps,
        wall_seconds=wall_seconds,
        wall_seconds_runs=wall_runs,
        profiled_wall_seconds=statistics.fmean(profiled_seconds),
        top_ops=_top_ops(events, profiled_steps, top_ops, set(names) | {FORWARD_RANGE}, on_cuda),
        components=_components(durations),
        flops=None if flop_count is None else flop_count.total,
        flops_breakdown=None if flop_count is None else flop_count.breakdown,
        achieved_flops_per_second=achieved,
        peak_flops=peak_flops,
        fraction_of_peak=fraction,
        out_dir=out_dir,
        trace_dir=trace_dir,
        tensorboard_traces=traces,
        chrome_trace=chrome_trace,
    )
