"""The one pipeline: checkpoint + profile -> probes -> records -> findings -> report.

``run(source, RunOptions(...))`` returns the report document (a plain dict, the schema of
``reports/README.md``); ``write(report, ...)`` puts it on disk atomically. The command decides
which concerns run: ``diagnose`` runs them all; ``attention``, ``residual``, ``routing``,
``extrapolation`` and ``profile`` run one each. Library code here never prints: progress goes
through the ``progress`` callback.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from workbench.errors import RunError
from workbench.findings import Finding, count_by_status, worst_status
from workbench.loading.sources import DEFAULT_MODEL
from workbench.report.schema import SECTIONS, TIME_FIELDS

SCHEMA_VERSION = 1
COMMANDS = {
    "diagnose": {"attention", "residual", "routing", "loss", "length", "kv", "timing", "nonfinite"},
    "attention": {"attention", "nonfinite"},
    "residual": {"residual", "loss", "nonfinite"},
    "routing": {"routing", "nonfinite"},
    "extrapolation": {"length", "nonfinite"},
    "profile": {"timing"},
    # what `pytest probes/` (and `workbench check`) runs: every analyzer, no profiler trace
    "check": {"attention", "residual", "routing", "loss", "length", "kv", "nonfinite"},
}
# Full patterns are kept for every head over the first PATTERN_ROWS tokens (the report's viewer).
PATTERN_ROWS = 48
# The KV section plots these devices (plus the deployment's) when they are in the catalog.
KV_DEVICES = ("h100-sxm", "a100-40gb", "l4", "t4", "rtx4090", "cpu")

Progress = Callable[[str], None]


@dataclass
class RunOptions:
    command: str = "diagnose"
    profile: str = "default"
    tokens: int | None = None  # main probe length (None: the profile's)
    prompt: str | None = None  # probe on this text instead of the corpus
    device: str = "cpu"
    dtype: str = "float32"
    seed: int | None = None  # None: the profile's
    backend: str = "native"  # "native" (the hooked decoder) or "nnsight" (the transformers model)
    trace_dir: Path | None = None  # where timing writes traces (the report folder copies them)



def _versions() -> dict[str, Any]:
    import workbench

    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a dependency
        transformers_version = None
    return {"name": "transformer-workbench", "version": workbench.__version__, "torch": torch.__version__,
            "transformers": transformers_version, "python": platform.python_version()}


def _main_probe(options: RunOptions, profile: Any, config: Any, tokenizer: Any, seed: int):
    from workbench.inputs import InputError, make_probe

    length = options.tokens or int(profile.probes["tokens"])
    if length < 2:
        raise RunError(f"--tokens must be at least 2, got {length}")
    cap = max(int(profile.probes["max_tokens"]), length if options.tokens else 0)
    if config.positions == "learned":
        length = min(length, config.max_positions)
    try:
        if options.prompt is not None:
            return make_probe("user", length, tokenizer=tokenizer, vocab_size=config.vocab_size,
                              text=options.prompt)
        return make_probe("natural", min(length, cap), tokenizer=tokenizer,
                          vocab_size=config.vocab_size, seed=seed)
    except InputError as error:
        raise RunError(str(error)) from None


def check_fits_in_memory(config: Any, tokens: int, device: str, dtype: str) -> None:
    """Refuse, before allocating, a probe whose forward cannot fit in this host's memory."""
    if device != "cpu":
        return
    from workbench.analyzers.kv_memory import PlanError, plan
    from workbench.settings import get_device

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


def out_of_memory_error(config: Any, tokens: int, device: str, dtype: str) -> RunError:
    """The message for a forward that ran out of device memory, with the largest length that fits."""
    from workbench.analyzers.kv_memory import PlanError, plan

    memory = device_memory_bytes(device)
    hint = ""
    if memory is not None:
        try:
            result = plan(config, memory, batch=1, context=tokens, kv_dtype=dtype, weights_dtype=dtype,
                          prefill_chunk=None)
            if result.max_context:
                hint = f"; the largest probe that fits is about {result.max_context:,} tokens (--tokens)"
        except PlanError:
            pass
    return RunError(f"out of memory on {device} with a {tokens:,}-token probe{hint}")


def run(source: str | None, options: RunOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run ``options.command`` on ``source``; returns the report document.

    A probe too long for the host is refused before anything is allocated (from the kv_memory
    estimate); on CUDA, running out of memory becomes a :class:`RunError` naming the largest
    length that fits."""
    try:
        return _run(source, options, progress)
    except torch.OutOfMemoryError:
        from workbench.loading import checkpoint

        config = checkpoint.load_config(source)
        raise out_of_memory_error(config, options.tokens or 0, options.device, options.dtype) from None


def _run(source: str | None, options: RunOptions, progress: Progress | None = None) -> dict[str, Any]:
    from workbench.loading import checkpoint
    from workbench.loading.tokenizer import load_tokenizer, token_labels
    from workbench.settings import load_profile

    say = progress or (lambda message: None)
    if options.command not in COMMANDS:
        raise RunError(f"unknown command {options.command!r}; choose one of {', '.join(COMMANDS)}")
    wanted = COMMANDS[options.command]
    started = time.perf_counter()
    created = datetime.now(UTC)
    profile = load_profile(options.profile)
    seed = profile.seed if options.seed is None else options.seed
    torch.manual_seed(seed)
    if options.backend == "nnsight":
        from workbench.pipeline.nnsight_run import run_nnsight

        return run_nnsight(source, options, profile, seed, say)
    if options.backend != "native":
        raise RunError(f"unknown backend {options.backend!r}; choose native or nnsight")
    config = checkpoint.load_config(source)
    check_fits_in_memory(config, options.tokens or int(profile.probes["tokens"]), options.device, options.dtype)
    say("loading model")
    model = checkpoint.load_model(source, dtype=options.dtype, device=options.device)
    config = model.config
    tokenizer = load_tokenizer(source)
    probe = _main_probe(options, profile, config, tokenizer, seed)
    findings: list[Finding] = []
    sections: dict[str, Any] = dict.fromkeys(SECTIONS)

    if "nonfinite" in wanted:
        from workbench.analyzers.nonfinite import scan_weights

        findings += scan_weights(model)
    recording = None
    if wanted & {"attention", "residual", "routing", "loss"}:
        say(f"recording a {probe.length}-token {probe.kind} probe")
        recording, watch_findings = _record_main(model, probe, wanted)
        findings += watch_findings
    labels = token_labels(tokenizer, probe.tokens[0, :PATTERN_ROWS].tolist())
    findings += _analyze_records(recording, config, profile, wanted, sections, probe, labels)

    if "length" in wanted:
        findings += _length(model, config, profile, tokenizer, seed, sections, say)
    if "kv" in wanted:
        findings += _kv(config, profile, sections)
    if "timing" in wanted:
        say("profiling the forward")
        sections["timing"] = _timing(model, probe, options)
    model_info = {"source": str(source or DEFAULT_MODEL), "name": config.name,
                  "model_type": config.model_type, "config": config.to_dict(), "n_params": model.n_params(),
                  "weights_quant": config.weights_quant}
    report = document(options, profile.name, seed, created, started, model_info, findings, probe, sections)
    if sections["timing"] is not None:
        trace = sections["timing"].get("trace", {})
        report["artifacts"]["trace_dir"] = trace.get("tensorboard_dir")
        report["artifacts"]["chrome_trace"] = trace.get("chrome_trace")
    return report


def document(options: RunOptions, profile_name: str, seed: int, created: datetime, started: float,
             model_info: dict[str, Any], findings: list[Finding], probe: Any,
             sections: dict[str, Any]) -> dict[str, Any]:
    """The report document (schema v1) around one run's findings and sections."""
    return {
        "schema": "transformer-workbench/report",
        "schema_version": SCHEMA_VERSION,
        "tool": _versions(),
        "run": {"id": "", "command": options.command, "created_utc": created.isoformat(timespec="seconds"),
                "duration_seconds": round(time.perf_counter() - started, 3), "profile": profile_name,
                "seed": seed, "device": options.device, "dtype": options.dtype, "backend": options.backend},
        "time_fields": list(TIME_FIELDS),
        "model": model_info,
        "summary": summarize(findings),
        "findings": [f.to_dict() for f in sort_findings(findings)],
        "probes": [{"name": probe.name, "kind": probe.kind, "length": probe.length, "seed": probe.seed,
                    "description": probe.description, "text": options.prompt}],
        **{name: sections.get(name) for name in SECTIONS},
        "artifacts": {"report_json": "report.json", "report_html": "report.html", "trace_dir": None,
                      "chrome_trace": None},
    }


def pattern_requests(n_layers: int, n_heads: int, length: int) -> list[Any]:
    """Keep every head's full pattern over the first PATTERN_ROWS query rows."""
    from workbench.recorders import PatternRequest

    rows = min(length, PATTERN_ROWS)
    return [PatternRequest(layer, head, 0, rows) for layer in range(n_layers) for head in range(n_heads)]


def _record_main(model: Any, probe: Any, wanted: set[str]):
    from workbench.analyzers.nonfinite import ActivationWatch
    from workbench.model.hooks import hooks
    from workbench.recorders import record

    config = model.config
    patterns = pattern_requests(config.n_layers, config.n_heads, probe.length)
    watch = ActivationWatch(model) if "nonfinite" in wanted else None
    with torch.no_grad(), record(
        model, attention="attention" in wanted, residual="residual" in wanted,
        routing="routing" in wanted and config.n_experts > 0, loss="loss" in wanted, patterns=patterns,
    ) as recording, hooks(model, watch.hooks() if watch else []):
        model.hidden(probe.tokens)
    return recording, (watch.findings() if watch else [])


def _analyze_records(recording, config, profile, wanted, sections, probe, labels) -> list[Finding]:
    from workbench.analyzers import routing_collapse, saturation

    findings: list[Finding] = []
    if recording is None:
        return findings
    if "attention" in wanted:
        findings += saturation.analyze(recording.attention, profile.thresholds.get(saturation.NAME))
        if recording.attention is not None:
            sections["attention"] = {**recording.attention.to_dict(), "probe": probe.name,
                                     "token_labels": labels}
    if "residual" in wanted and recording.residual is not None:
        sections["residual"] = {**recording.residual.to_dict(), "probe": probe.name}
        if recording.loss is not None:
            sections["residual"]["loss"] = recording.loss.to_dict()
    if "routing" in wanted:
        findings += routing_collapse.analyze(recording.routing, profile.thresholds.get(routing_collapse.NAME),
                                             is_moe=config.n_experts > 0)
        if recording.routing is not None:
            sections["routing"] = recording.routing.to_dict()
    return findings


def _length(model, config, profile, tokenizer, seed, sections, say) -> list[Finding]:
    from workbench.analyzers import length_extrapolation
    from workbench.inputs import natural_text_tokens
    from workbench.measurements.length import run_length_sweep, sweep_lengths

    probes = profile.probes
    lengths, skipped = sweep_lengths(config.max_positions, list(probes["extrapolation_factors"]),
                                     list(probes["lengths"]), int(probes["max_tokens"]))

    def natural(length: int, probe_seed: int) -> torch.Tensor:
        return natural_text_tokens(tokenizer, length, batch=int(probes["batch"]), seed=probe_seed,
                                   vocab_size=config.vocab_size)

    record = run_length_sweep(model, lengths, natural=natural, vocab_size=config.vocab_size,
                              block_len=int(probes["repeat_block"]), seed=seed, batch=int(probes["batch"]),
                              skipped=skipped, progress=say)
    findings = length_extrapolation.analyze(record, profile.thresholds.get(length_extrapolation.NAME))
    section = record.to_dict()
    effective = {}
    for finding in findings:
        if finding.check.startswith("loss_beyond_context_"):
            effective[finding.check.removeprefix("loss_beyond_context_")] = finding.details.get("effective_context")
    for entry in section["probes"]:
        match = next(p for p in record.probes if p.kind == entry["kind"] and p.length == entry["length"])
        if match.loss is not None:
            inside, beyond = length_extrapolation.levels(match, record.boundary)
            entry["in_context_loss"] = None if inside != inside else round(inside, 4)
            entry["beyond_loss"] = None if beyond != beyond else round(beyond, 4)
        else:
            entry["in_context_loss"] = entry["beyond_loss"] = None
    section["effective_context"] = effective
    sections["length"] = section
    return findings


def kv_curves(config, devices: list[Any], batch: int, kv_dtype: str | None) -> list[dict[str, Any]]:
    from workbench.analyzers.kv_memory import PlanError, plan

    contexts = sorted({2**k for k in range(8, 25) if 2**k <= 4 * config.max_positions} | {config.max_positions})
    out = []
    for device in devices:
        curve = []
        result = None
        for context in contexts:
            try:
                result = plan(config, device, batch=batch, context=context, kv_dtype=kv_dtype)
            except PlanError:
                break
            curve.append({"context": context, "total_bytes": result.total_bytes, "kv_bytes": result.kv_bytes,
                          "weights_bytes": result.weights_bytes})
        if result is None:
            continue
        out.append({"name": device.name, "usable_bytes": result.device_bytes,
                    "memory_bytes": device.memory_bytes, "curve": curve, "max_context": result.max_context})
    return out


def _kv(config, profile, sections) -> list[Finding]:
    from workbench.analyzers import kv_memory
    from workbench.settings import get_device, list_devices

    deployment = profile.deployment
    device = get_device(deployment.device)
    context = deployment.context or config.max_positions
    thresholds = profile.thresholds.get("kv_memory")
    findings = kv_memory.analyze(config, device, deployment.batch, context, kv_dtype=deployment.kv_dtype,
                                 tp=deployment.tp, utilization=deployment.utilization,
                                 block_size=deployment.block_size, prefill_chunk=deployment.prefill_chunk,
                                 thresholds=thresholds)
    result = kv_memory.plan(config, device, batch=deployment.batch, context=context,
                            kv_dtype=deployment.kv_dtype, tp=deployment.tp, utilization=deployment.utilization,
                            block_size=deployment.block_size, prefill_chunk=deployment.prefill_chunk,
                            thresholds=thresholds)
    names = [deployment.device] + [n for n in KV_DEVICES if n in list_devices() and n != deployment.device]
    sections["kv"] = {"batch": deployment.batch, "kv_dtype": result.to_dict().get("kv_dtype") or "auto",
                      "plan": result.to_dict(),
                      "devices": kv_curves(config, [get_device(n) for n in names], deployment.batch,
                                           deployment.kv_dtype)}
    return findings


def _timing(model, probe, options: RunOptions) -> dict[str, Any]:
    from workbench.measurements.timing import profile_forward

    if options.trace_dir is None:  # write() copies traces from here into the report folder
        options.trace_dir = Path(tempfile.mkdtemp(prefix="workbench-trace-"))
    out_dir = options.trace_dir

    def forward(m, tokens):
        with torch.no_grad():
            return m.hidden(tokens)

    record = profile_forward(model, probe.tokens, out_dir=out_dir, run_name="forward", forward=forward)
    data = record.to_dict()
    data["trace"] = {"tensorboard_dir": data.get("trace_dir"), "chrome_trace": data.get("chrome_trace")}
    return data


def write(report: dict[str, Any], out: Path | None, options: RunOptions,
          reports_root: Path = Path("reports")) -> Path:
    """Write the report folder atomically (with the traces the timing step left in
    ``options.trace_dir``); returns the folder."""
    from workbench.report.writer import write_report

    trace_source = None
    if options.trace_dir is not None and (Path(options.trace_dir) / "trace").is_dir():
        trace_source = Path(options.trace_dir) / "trace"
    return write_report(report, out, reports_root=reports_root, trace_source=trace_source)


def summarize(findings: list[Finding]) -> dict[str, Any]:
    by_analyzer: dict[str, str] = {}
    for analyzer in {f.analyzer for f in findings}:
        by_analyzer[analyzer] = worst_status([f for f in findings if f.analyzer == analyzer])
    status = worst_status([f for f in findings if f.status in ("fail", "warn")]) if findings else "pass"
    return {"status": status if status in ("fail", "warn") else "pass", "counts": count_by_status(findings),
            "analyzers": dict(sorted(by_analyzer.items()))}


def sort_findings(findings: list[Finding]) -> list[Finding]:
    order = {"fail": 0, "warn": 1, "info": 2, "skip": 3, "pass": 4}
    return sorted(findings, key=lambda f: (order[f.status], f.analyzer, f.where.layer if f.where.layer is not None else -1,
                                           f.where.head if f.where.head is not None else -1, f.check))
