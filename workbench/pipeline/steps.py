"""The pipeline's steps: the main probe, analysing its records, the length sweep, the KV plan, timing.

Each step takes what it needs and returns findings (and fills its report section); none prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from workbench.analyzers import kv_memory, length_extrapolation, routing_collapse, saturation
from workbench.config import DecoderConfig
from workbench.errors import InputError, PlanError, RunError
from workbench.findings import Finding
from workbench.inputs import ProbeInput, make_probe, natural_text_tokens
from workbench.measurements.length import claimed_context, run_length_sweep, sweep_lengths
from workbench.measurements.peak import peak_flops
from workbench.measurements.timing import profile_forward
from workbench.memory.planner import plan
from workbench.pipeline.commands import PATTERN_ROWS
from workbench.pipeline.kv import deployment_options, plan_section
from workbench.recorders import PatternRequest, Recording
from workbench.recorders.routing import RoutingRecord, combine
from workbench.settings import Device, Profile, get_device, list_devices
from workbench.structured_text import structured_probe

# The KV section plots these devices (plus the deployment's) when they are in the catalog.
KV_DEVICES = ("h100-sxm", "a100-40gb", "l4", "t4", "rtx4090", "cpu")


def main_probe(options: Any, profile: Profile, vocab_size: int, positions: str, max_positions: int,
               tokenizer: Any, seed: int) -> ProbeInput:
    """The probe every recorder sees: the user's text, else natural text of the profile's length."""
    length = options.tokens or int(profile.probes["tokens"])
    if length < 2:
        raise RunError(f"--tokens must be at least 2, got {length}")
    cap = max(int(profile.probes["max_tokens"]), length if options.tokens else 0)
    length = min(length, max_positions)  # past its claimed context any model looks broken
    try:
        if options.prompt is not None:
            return make_probe("user", length, tokenizer=tokenizer, vocab_size=vocab_size, text=options.prompt)
        return make_probe("natural", min(length, cap), tokenizer=tokenizer, vocab_size=vocab_size, seed=seed)
    except InputError as error:
        raise RunError(str(error)) from None


def pattern_requests(n_layers: int, n_heads: int, length: int) -> list[PatternRequest]:
    """Keep every head's full pattern over the first PATTERN_ROWS query rows."""
    rows = min(length, PATTERN_ROWS)
    return [PatternRequest(layer, head, 0, rows) for layer in range(n_layers) for head in range(n_heads)]


def analyze_records(recording: Recording | None, n_experts: int, profile: Profile, wanted: set[str],
                    sections: dict[str, Any], probe: ProbeInput, labels: list[str],
                    vocab_size: int | None = None) -> list[Finding]:
    """Findings and report sections from the main probe's records (``vocab_size``: chance, log V,
    against which the probe's loss tells an untrained model from a broken one)."""
    findings: list[Finding] = []
    if recording is None:
        return findings
    if "attention" in wanted:
        loss = recording.loss.mean if recording.loss is not None else None
        findings += saturation.analyze(recording.attention, profile.thresholds.get(saturation.NAME),
                                       loss_nats=loss, vocab_size=vocab_size)
        if recording.attention is not None:
            sections["attention"] = {**recording.attention.to_dict(), "probe": probe.name,
                                     "token_labels": labels}
    if "residual" in wanted and recording.residual is not None:
        sections["residual"] = {**recording.residual.to_dict(), "probe": probe.name}
        if recording.loss is not None:
            sections["residual"]["loss"] = recording.loss.to_dict()
    if "routing" in wanted:
        loss = recording.loss.mean if recording.loss is not None else None
        findings += routing_collapse.analyze(recording.routing, profile.thresholds.get(routing_collapse.NAME),
                                             is_moe=n_experts > 0, loss_nats=loss, vocab_size=vocab_size)
        # a dense model's section is present and empty: routing ran and found no MoE layer
        sections["routing"] = recording.routing.to_dict() if recording.routing is not None else {"layers": []}
    return findings


def sweep(config: DecoderConfig, profile: Profile, requested: int | None = None) -> tuple[list[int], list[int]]:
    """The length sweep's probe lengths for ``config`` under ``profile``, and the lengths left out
    (:func:`~workbench.measurements.length.sweep_lengths`); ``requested`` is ``extrapolation
    --tokens N``, the longest probe past the profile's cap."""
    probes = profile.probes
    return sweep_lengths(claimed_context(config)[0], list(probes["extrapolation_factors"]),
                         list(probes["lengths"]), int(probes["max_tokens"]), requested=requested)


def longest_sweep(config: DecoderConfig, profile: Profile, requested: int | None = None) -> int:
    """The longest probe of the length sweep (what the memory guard checks before it runs)."""
    return max(sweep(config, profile, requested)[0], default=2)


def routing_inputs(probe: ProbeInput, profile: Profile, tokenizer: Any, vocab_size: int,
                   seed: int) -> dict[str, torch.Tensor]:
    """The other kinds of input routing is judged on besides the main probe, at its length:
    structured text, repeated blocks, random ids (``[1, T]`` each, on the CPU). An expert is dead
    only if it is dead on all of them."""
    n_tokens = probe.length
    block = min(int(profile.probes["repeat_block"]), max(1, n_tokens // 2))
    others = {
        "structured": structured_probe(n_tokens, tokenizer=tokenizer, vocab_size=vocab_size, seed=seed),
        "repeated": make_probe("repeated", n_tokens, vocab_size=vocab_size, seed=seed, block_len=block),
        "random": make_probe("random", n_tokens, vocab_size=vocab_size, seed=seed),
    }
    return {kind: other.tokens for kind, other in others.items() if kind != probe.kind}


def route_more_inputs(backend: Any, loaded: Any, probe: ProbeInput, main: RoutingRecord, profile: Profile,
                      seed: int) -> RoutingRecord | None:
    """The main probe's routing pooled with that of :func:`routing_inputs`, each kind kept apart."""
    others = routing_inputs(probe, profile, loaded.tokenizer, loaded.description.vocab_size, seed)
    records: dict[str, RoutingRecord | None] = {probe.kind: main}
    for kind, tokens in others.items():
        recording, _ = backend.record(loaded, tokens.to(probe.tokens.device), attention=False, residual=False,
                                      routing=True, loss=False, patterns=[], watch_nonfinite=False)
        records[kind] = recording.routing
    return combine(records)


def length(model: Any, config: DecoderConfig, profile: Profile, tokenizer: Any, seed: int,
           sections: dict[str, Any], say: Any, longest: int | None = None) -> list[Finding]:
    """The length sweep around the claimed context, its findings and the report's length section.
    ``longest`` (``extrapolation --tokens N``) is the longest probe, past the profile's cap."""
    probes = profile.probes
    lengths, skipped = sweep(config, profile, longest)

    def natural(n_tokens: int, probe_seed: int) -> torch.Tensor:
        return natural_text_tokens(tokenizer, n_tokens, batch=int(probes["batch"]), seed=probe_seed,
                                   vocab_size=config.vocab_size)

    seeds = [seed + i for i in range(int(probes["length_seeds"]))]
    record = run_length_sweep(model, lengths, natural=natural, vocab_size=config.vocab_size,
                              block_len=int(probes["repeat_block"]), seeds=seeds, batch=int(probes["batch"]),
                              copy_text=tokenizer is not None, skipped=skipped, progress=say)
    findings = length_extrapolation.analyze(record, profile.thresholds.get(length_extrapolation.NAME))
    sections["length"] = length_extrapolation.section(record, findings)
    return findings


def kv_curves(config: DecoderConfig, devices: list[Device], options: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's KV chart: per device, total memory against context under the deployment's
    engine, up to the model's limit, with the largest context and why it stops there."""
    contexts = sorted({2**k for k in range(8, 25) if 2**k < config.max_positions} | {config.max_positions})
    out = []
    for device in devices:
        curve = []
        result = None
        for context in contexts:
            try:
                result = plan(config, device, **{**options, "context": context})
            except PlanError:
                break
            curve.append({"context": context, "total_bytes": result.total_bytes, "kv_bytes": result.kv_bytes,
                          "weights_bytes": result.weights_bytes})
        if result is None:
            continue
        out.append({"name": device.name, "usable_bytes": result.device_bytes,
                    "memory_bytes": result.device_memory_bytes, "memory_basis": result.memory_basis,
                    "curve": curve, "max_context": result.max_context,
                    "max_context_reason": result.max_context_reason})
    return out


def kv(config: DecoderConfig, profile: Profile, sections: dict[str, Any]) -> list[Finding]:
    """The KV plan of the profile's deployment as its engine (vLLM by default) would make it, its
    findings and the report's KV section (the same plan the chart draws). A deployment that does
    not fit is the profile's ``oversize`` status (warn by default: a limit of the deployment)."""
    deployment = profile.deployment
    device = get_device(deployment.device)
    thresholds = profile.thresholds.get("kv_memory")
    options = deployment_options(config, deployment)
    # A profile may ask for a context past the model's limit: plan it (context_within_model warns)
    # rather than refuse; otherwise the largest context stays capped at the limit.
    options["allow_long_context"] = options["context"] > config.max_positions
    result = plan(config, device, **options)
    findings = kv_memory.analyze_plan(result, config, device, options, thresholds=thresholds,
                                      oversize=deployment.oversize)
    names = [deployment.device] + [n for n in KV_DEVICES if n in list_devices() and n != deployment.device]
    sections["kv"] = {"batch": deployment.batch, "kv_dtype": result.kv_dtype, "engine": result.engine,
                      "plan": plan_section(result, thresholds),
                      "devices": kv_curves(config, [get_device(n) for n in names],
                                           {**options, "allow_long_context": False})}
    return findings


def timing(model: Any, probe: ProbeInput, trace_dir: Path, device: str = "cpu",
           dtype: str = "float32") -> dict[str, Any]:
    """Profile the main probe's forward; traces go to ``trace_dir``. The catalog's peak for the
    device at ``dtype`` gives the fraction of peak (none on the CPU)."""

    def forward(m: Any, tokens: torch.Tensor) -> Any:
        with torch.no_grad():
            return m.hidden(tokens)

    record = profile_forward(model, probe.tokens, out_dir=trace_dir, run_name="forward", forward=forward,
                             peak_flops=peak_flops(device, dtype))
    data = record.to_dict()
    data["trace"] = {"tensorboard_dir": data.get("trace_dir"), "chrome_trace": data.get("chrome_trace")}
    return data
