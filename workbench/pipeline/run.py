"""The one pipeline: checkpoint + profile -> probes -> records -> findings -> report.

``run(source, RunOptions(...))`` returns a :class:`RunResult` holding the report document (a
plain dict, the schema of ``reports/README.md``) and the folder of any profiler traces; ``write(
result, ...)`` puts both on disk atomically. The command decides which concerns run: ``diagnose``
runs them all; ``attention``, ``residual``, ``routing``, ``extrapolation`` and ``profile`` one
each. Either backend runs through the same steps; what a backend cannot do becomes a ``skip``
finding. Library code here never prints: progress goes through the ``progress`` callback.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from workbench.analyzers import nonfinite, routing_collapse
from workbench.backends.base import NOT_SUPPORTED, Backend
from workbench.backends.native import NativeBackend
from workbench.backends.nnsight.backend import NnsightBackend
from workbench.errors import RunError, WorkbenchError
from workbench.findings import Finding
from workbench.loading.checkpoint import COMPUTE_DTYPES, parse_dtype
from workbench.loading.sources import DEFAULT_MODEL
from workbench.loading.tokenizer import token_labels
from workbench.pipeline import steps
from workbench.pipeline.commands import COMMANDS, PATTERN_ROWS
from workbench.pipeline.document import document
from workbench.pipeline.guard import (
    ProbeTooLong,
    check_fits_in_memory,
    device_memory_bytes,
    out_of_memory_error,
    with_time_estimate,
)
from workbench.pipeline.preflight import check_device
from workbench.recorders.nonfinite import STORED_PROBE_TOKENS, scan_weights, stored_half_dtype, watch_in_dtype
from workbench.recorders.progress import OnTick, layer_progress
from workbench.report.schema import SECTIONS
from workbench.report.writer import write_report
from workbench.settings import load_profile

__all__ = ["COMMANDS", "RunError", "RunOptions", "RunResult", "device_memory_bytes", "run", "write"]

BACKENDS: dict[str, Callable[[], Backend]] = {"native": NativeBackend, "nnsight": NnsightBackend}
Progress = Callable[[str], None]
# torch.Generator.manual_seed takes seeds below 2**63 on every platform.
MAX_SEED = 2**63


@dataclass(frozen=True)
class RunOptions:
    """What to run and how; the pipeline only reads these."""

    command: str = "diagnose"
    profile: str = "default"
    tokens: int | None = None  # main probe length (None: the profile's)
    prompt: str | None = None  # probe on this text instead of the corpus
    device: str = "cpu"
    dtype: str = "float32"
    seed: int | None = None  # None: the profile's
    backend: str = "native"  # "native" (the hooked decoder) or "nnsight" (the transformers model)
    trace_dir: Path | None = None  # where timing writes traces (None: a temporary folder the result owns)


@dataclass
class RunResult:
    """A run's report document and the folder holding its profiler traces (None without timing).

    A temporary trace folder belongs to the result: :func:`write` copies it into the report
    folder, and it is removed by :meth:`cleanup` or when the result is garbage-collected.
    """

    report: dict[str, Any]
    trace_dir: Path | None = None
    _finalizer: Any = field(default=None, repr=False)

    def cleanup(self) -> None:
        """Remove the temporary trace folder (a caller-given ``trace_dir`` is left alone)."""
        if self._finalizer is not None:
            self._finalizer()


def run(source: str | None, options: RunOptions, progress: Progress | None = None,
        on_layer: OnTick | None = None) -> RunResult:
    """Run ``options.command`` on ``source``; see the module docstring.

    ``options.device`` must be a device this host has (checked first, before anything loads). A
    probe too long for the host is refused before anything is allocated (from the memory
    planner's estimate), with how long the largest that fits would take here; on CUDA, running
    out of memory becomes a :class:`RunError` naming the largest length that fits.
    ``progress`` hears of each step; ``on_layer`` of each block finished inside the long
    forwards (recording and the length sweep), with the time left in that forward."""
    say = progress or (lambda message: None)
    if options.command not in COMMANDS:
        raise RunError(f"unknown command {options.command!r}; choose one of {', '.join(COMMANDS)}")
    if options.backend not in BACKENDS:
        raise RunError(f"unknown backend {options.backend!r}; choose one of {', '.join(BACKENDS)}")
    check_options(options)
    options = dataclasses.replace(options, device=check_device(options.device))
    backend = BACKENDS[options.backend]()
    wanted = COMMANDS[options.command]
    started, created = time.perf_counter(), datetime.now(UTC)
    profile = load_profile(options.profile)
    seed = profile.seed if options.seed is None else options.seed
    if not 0 <= seed < MAX_SEED:
        raise RunError(f"{profile.path}: [run] seed {seed} is out of range (0 to {MAX_SEED - 1})")
    torch.manual_seed(seed)
    config = backend.planning_config(source)
    tokens = options.tokens or int(profile.probes["tokens"])
    label = str(source or DEFAULT_MODEL)
    try:
        check_fits_in_memory(config, tokens, options.device, options.dtype, label=label,
                             setting="--tokens" if options.tokens else f"{profile.path} [probes] tokens")
        if config is not None and "length" in wanted:  # the sweep's longest probe, at the profile's batch
            check_fits_in_memory(config, steps.longest_sweep(config, profile, _requested_longest(options)),
                                 options.device, options.dtype, batch=int(profile.probes["batch"]), label=label,
                                 setting=f"the length sweep of {profile.path} [probes]")
    except ProbeTooLong as error:
        if not error.largest_tokens or not backend.supports("timing"):  # the estimate times forwards
            raise
        say("timing short forwards to say how long the largest probe that fits would take")
        try:
            model = backend.load(source, options.dtype, options.device).module
        except WorkbenchError:  # a checkpoint that cannot load: the guard's refusal stands alone
            raise error from None
        raise with_time_estimate(error, model) from None
    result = RunResult(report={})
    if "timing" in wanted and backend.supports("timing"):
        if options.trace_dir is not None:
            result.trace_dir = Path(options.trace_dir)
        else:
            result.trace_dir = Path(tempfile.mkdtemp(prefix="workbench-trace-"))
            result._finalizer = weakref.finalize(result, shutil.rmtree, result.trace_dir, True)
    try:
        result.report = _run(source, options, backend, profile, seed, wanted, started, created, result.trace_dir,
                             say, on_layer)
    except torch.OutOfMemoryError:
        result.cleanup()
        raise out_of_memory_error(config, tokens, options.device, options.dtype) from None
    except BaseException:
        result.cleanup()
        raise
    return result


def _run(source: str | None, options: RunOptions, backend: Backend, profile: Any, seed: int, wanted: set[str],
         started: float, created: datetime, trace_dir: Path | None, say: Progress,
         on_layer: OnTick | None = None) -> dict[str, Any]:
    say(f"loading model{backend.loading_note}")
    loaded = backend.load(source, options.dtype, options.device)
    description = loaded.description
    blocks = getattr(loaded.module, "blocks", None) if backend.supports("layer_progress") else None

    def ticking() -> AbstractContextManager[None]:
        # per-block progress in the long forwards; never around timing, whose forwards it would slow
        return layer_progress(blocks, on_layer) if blocks is not None else nullcontext()

    probe = steps.main_probe(options, profile, description.vocab_size, description.positions,
                             description.max_positions, loaded.tokenizer, seed)
    findings: list[Finding] = []
    sections: dict[str, Any] = dict.fromkeys(SECTIONS)
    if "nonfinite" in wanted:
        findings += nonfinite.analyze_weights(scan_weights(loaded.module))
        findings += _stored_dtype(loaded.module, description.decoder_config, options.dtype, probe, backend, say)
    recording = None
    if wanted & {"attention", "residual", "routing", "loss"}:
        say(f"recording a {probe.length}-token {probe.kind} probe{backend.recording_note}")
        with ticking():
            recording, first_nonfinite = backend.record(
                loaded, probe.tokens, attention="attention" in wanted, residual="residual" in wanted,
                routing="routing" in wanted, loss="loss" in wanted,
                patterns=steps.pattern_requests(description.n_layers, description.n_heads, probe.length),
                watch_nonfinite="nonfinite" in wanted)
        if "nonfinite" in wanted:
            findings += nonfinite.analyze_activations(first_nonfinite)
        if first_nonfinite is not None:  # NaN/Inf records judge nothing: their analyzers say skip
            moe = {"routing"} if description.n_experts else set()
            findings += nonfinite.downstream_skips(wanted & ({"attention", "length"} | moe))
            if "routing" in wanted and not description.n_experts:  # still says why routing is not judged
                findings += routing_collapse.analyze(None, None, is_moe=False)
            recording, wanted = None, wanted - {"attention", "residual", "routing", "loss", "length"}
        if ("routing" in wanted and recording is not None and recording.routing is not None
                and options.prompt is None):
            say(f"routing structured text, repeated blocks and random ids{backend.recording_note}")
            recording.routing = steps.route_more_inputs(backend, loaded, probe, recording.routing, profile, seed)
    labels = token_labels(loaded.tokenizer, probe.tokens[0, :PATTERN_ROWS].tolist())
    findings += steps.analyze_records(recording, description.n_experts, profile, wanted, sections, probe, labels,
                                      vocab_size=description.vocab_size)
    for concern in ("length", "kv", "timing"):
        if concern in wanted and not backend.supports(concern, description):
            analyzer, reason = NOT_SUPPORTED[concern]
            findings.append(Finding(analyzer, "backend", "skip", f"not run on the {backend.name} backend: {reason}"))
    if "length" in wanted and backend.supports("length", description):
        longest = _requested_longest(options)
        with ticking():
            findings += steps.length(loaded.module, description.decoder_config, profile, loaded.tokenizer, seed,
                                     sections, say, longest)
    if "kv" in wanted and backend.supports("kv", description):
        findings += steps.kv(description.decoder_config, profile, sections)
    if trace_dir is not None:  # run() makes one only when timing is wanted and supported
        say("profiling the forward")
        sections["timing"] = steps.timing(loaded.module, probe, trace_dir, options.device, options.dtype)
    report = document(options, profile.name, seed, created, started, description.model_info(), findings, probe,
                      sections)
    if sections["timing"] is not None:
        trace = sections["timing"].get("trace", {})
        report["artifacts"]["trace_dir"] = trace.get("tensorboard_dir")
        report["artifacts"]["chrome_trace"] = trace.get("chrome_trace")
    return report


def _requested_longest(options: RunOptions) -> int | None:
    """``extrapolation --tokens N`` makes N the sweep's longest probe; other commands use the profile's."""
    return options.tokens if options.command == "extrapolation" else None


def check_options(options: RunOptions) -> None:
    """Options that cannot run, refused before anything loads (one line each)."""
    if options.dtype not in COMPUTE_DTYPES:
        raise RunError(f"--dtype {options.dtype!r} is not a compute dtype; choose one of "
                       f"{', '.join(sorted(COMPUTE_DTYPES))} (int8 and other storage types are for `workbench kv`)")
    if options.seed is not None and not 0 <= options.seed < MAX_SEED:
        raise RunError(f"--seed {options.seed} is out of range: give an integer from 0 to {MAX_SEED - 1}")


def _stored_dtype(model: Any, config: Any, dtype: str, probe: Any, backend: Backend, say: Progress) -> list[Finding]:
    """The checkpoint in its own half-precision dtype, besides the compute dtype (where the backend
    supports it)."""
    if not backend.supports("stored_dtype") or config is None:
        return []
    stored = stored_half_dtype(config.dtype, parse_dtype(dtype))
    if stored is None:
        return []
    name = str(stored).removeprefix("torch.")
    say(f"checking the forward in {name}, the stored dtype")
    tokens = probe.tokens[:, :STORED_PROBE_TOKENS]
    return nonfinite.analyze_stored_dtype(watch_in_dtype(model, tokens, stored), name, int(tokens.shape[1]))


def write(result: RunResult, out: Path | None, reports_root: Path = Path("reports"), force: bool = False) -> Path:
    """Write the report folder atomically, with the traces of ``result``; returns the folder.
    ``out``: absent or empty; a folder holding files only with ``force`` (see
    :func:`workbench.report.writer.write_report`)."""
    trace_source = None
    if result.trace_dir is not None and (result.trace_dir / "trace").is_dir():
        trace_source = result.trace_dir / "trace"
    try:
        return write_report(result.report, out, reports_root=reports_root, trace_source=trace_source, force=force)
    finally:
        result.cleanup()
