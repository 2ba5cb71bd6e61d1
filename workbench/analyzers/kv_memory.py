"""KV-memory verdicts: judge a :class:`~workbench.memory.planner.KVPlan`.

The plan itself (bytes, budget, concurrency, largest context) is :mod:`workbench.memory`'s;
this module only says how risky it is (``risk_level``), what to change (``fixes``, each one
re-planned with one option changed) and turns it into findings (``analyze_plan``).

A deployment that does not fit is ``fail`` in ``workbench kv``; in ``diagnose`` it is a limit of
the deployment, not of the checkpoint, so the profile's ``[deployment] oversize`` decides
(``warn`` by default, ``fail`` for profiles that gate on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from workbench.analyzers import default_thresholds
from workbench.config import DecoderConfig
from workbench.errors import PlanError
from workbench.findings import Finding, Status
from workbench.memory.dtypes import storage_bytes
from workbench.memory.params import weights_bytes
from workbench.memory.planner import DeviceLike, KVPlan, plan
from workbench.units import gib

Risk = Literal["low", "medium", "high", "oom"]
ANALYZER = "kv_memory"



def resolve_thresholds(thresholds: Mapping[str, Any] | None) -> dict[str, float]:
    """The defaults of profiles/default.toml overridden by ``thresholds``; an unknown name is an
    error naming it."""
    defaults = default_thresholds(ANALYZER)
    unknown = sorted(set(thresholds or {}) - set(defaults))
    if unknown:
        known = ", ".join(defaults)
        raise PlanError(f"unknown kv_memory thresholds: {', '.join(unknown)} (known: {known})")
    return {k: float(v) for k, v in {**defaults, **(thresholds or {})}.items()}


def risk_level(fraction: float, thresholds: Mapping[str, float] | None = None) -> Risk:
    """low below ``medium_fraction`` of the budget, medium below ``high_fraction``, high up to
    100%, oom beyond."""
    limits = resolve_thresholds(thresholds)
    if fraction > 1.0:
        return "oom"
    if fraction >= limits["high_fraction"]:
        return "high"
    return "medium" if fraction >= limits["medium_fraction"] else "low"


def fixes(config: DecoderConfig, device: DeviceLike | int, result: KVPlan, options: dict) -> str:
    """Concrete alternatives, each computed by re-planning with one option changed."""
    found: list[str] = []
    fixed = result.weights_bytes + result.activation_bytes + result.non_torch_bytes
    if fixed > result.device_bytes:
        found.append(f"weights and workspace alone need {gib(fixed)} of {gib(result.device_bytes)}")
        for dtype, label in (("fp8", "fp8"), ("int4", "int4")):
            if storage_bytes(256, dtype) < storage_bytes(256, result.weights_dtype):
                size = weights_bytes(config, dtype, tp=result.tp)
                found.append(f"{label} weights take {gib(size)} per device")
    else:
        if result.max_context:
            found.append(f"at batch {result.batch} the largest context that fits is {result.max_context:,} tokens")
        if result.max_batch:
            found.append(f"at context {result.context:,} the largest batch that fits is {result.max_batch:,}")
        if storage_bytes(256, result.kv_dtype) > 256:
            try:
                fp8 = plan(config, device, **{**options, "kv_dtype": "fp8"})
            except PlanError:
                fp8 = None
            if fp8 is not None:
                verdict = "fits" if fp8.fits else "still does not fit"
                found.append(f"an fp8 KV cache (--kv-dtype fp8) takes {gib(fp8.kv_bytes)}: {verdict}")
    for tp in (2, 4, 8, 16):
        if tp > result.tp and config.n_heads % tp == 0:
            try:
                sharded = plan(config, device, **{**options, "tp": tp})
            except PlanError:
                continue
            if sharded.fits:
                found.append(f"tensor parallel over {tp} devices (--tp {tp}): {gib(sharded.total_bytes)} each")
                break
    return "; ".join(found) or "no single change fits: combine a smaller batch and context"


def analyze_plan(
    result: KVPlan,
    config: DecoderConfig,
    device: DeviceLike | int,
    options: dict[str, Any],
    *,
    thresholds: Mapping[str, Any] | None = None,
    oversize: Status = "fail",
) -> list[Finding]:
    """Findings for one plan: ``fits`` (``oversize`` when it does not fit, warn at high risk),
    ``max_context`` (info below the model's limit), ``max_batch`` (info) and
    ``context_within_model`` (warn past max_positions). ``options`` are the keyword arguments
    the plan was made with (for the fixes)."""
    limits = resolve_thresholds(thresholds)
    risk = risk_level(result.fraction_used, limits)
    status: Status = oversize if not result.fits else "warn" if risk == "high" else "pass"
    verdict = "fits" if result.fits else "does not fit"
    verdict = "fits with little headroom" if result.fits and status == "warn" else verdict
    usage = (
        f"{result.engine_title}, {result.device}: KV budget {gib(result.kv_budget_bytes)} = "
        f"{result.utilization:.2f} x {gib(result.device_memory_bytes)} ({result.memory_basis}) - weights "
        f"{gib(result.weights_bytes)} - activations {gib(result.activation_bytes)} - outside torch "
        f"{gib(result.non_torch_bytes)}; {result.batch} x {result.context:,} tokens need "
        f"{gib(result.kv_bytes)} ({result.kv_dtype}); maximum concurrency for {result.context:,} "
        f"tokens per request: {result.max_concurrency:.2f}x"
    )
    max_context, limit = result.max_context, config.max_positions
    full = max_context is None or max_context >= limit
    reach = "any context fits" if max_context is None else f"up to {max_context:,} tokens fit"
    reach = "no context fits" if max_context == 0 else reach
    beyond = result.beyond_model_limit
    return [
        Finding(
            analyzer=ANALYZER, check="fits", status=status,
            message=f"{config.name} {verdict} (risk {risk}): {usage}",
            metric="memory_fraction", value=result.fraction_used,
            threshold=1.0 if not result.fits else limits["high_fraction"],
            fix=None if status == "pass" else fixes(config, device, result, options),
            details={**result.to_dict(), "risk": risk},
        ),
        Finding(
            analyzer=ANALYZER, check="max_context", status="pass" if full else "info",
            message=f"at batch {result.batch}, {reach} ({result.max_context_reason}; model "
            f"max_positions {limit:,})",
            metric="max_context", value=None if max_context is None else float(max_context),
            threshold=float(limit),
        ),
        Finding(
            analyzer=ANALYZER, check="max_batch", status="info",
            message=f"at context {result.context:,}, up to {result.max_batch:,} requests fit "
            f"(maximum concurrency {result.max_concurrency:.2f}x)",
            metric="max_batch", value=float(result.max_batch), threshold=float(result.batch),
        ),
        Finding(
            analyzer=ANALYZER, check="context_within_model", status="warn" if beyond else "pass",
            message=f"context {result.context:,} {'exceeds' if beyond else 'is within'} the model's "
            f"max_positions {limit:,}",
            metric="context", value=float(result.context), threshold=float(limit),
            fix=f"positions past {limit:,} are untrained" if beyond else None,
        ),
    ]  # fmt: skip


def analyze(
    config: DecoderConfig,
    device: DeviceLike | int,
    batch: int,
    context: int,
    *,
    thresholds: Mapping[str, Any] | None = None,
    oversize: Status = "fail",
    **options: Any,
) -> list[Finding]:
    """Plan (``options`` as :func:`workbench.memory.planner.plan` takes them) and judge."""
    options = {"batch": batch, "context": context, **options}
    result = plan(config, device, **options)
    return analyze_plan(result, config, device, options, thresholds=thresholds, oversize=oversize)
