"""`workbench kv`: KV-cache and weights memory for a deployment, from a config alone.

MODEL is an architecture profile name or Hugging Face id from ``profiles/architectures``, or
anything :func:`workbench.loading.checkpoint.load_config` reads (checkpoint folder, config.json, .gguf);
no weights are loaded. The answer is the serving engine's (vLLM at its defaults unless
``engine`` says otherwise). Unset options come from the run profile's ``[deployment]`` table,
then from the engine's table; an option given as an empty string is an error, never a silent
fallback to the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.analyzers.kv_memory import analyze_plan, risk_level
from workbench.config import DecoderConfig
from workbench.errors import PlanError, ProfileError
from workbench.loading.checkpoint import load_config
from workbench.memory.engines import get_engine
from workbench.memory.planner import plan
from workbench.settings import get_architecture, get_device, load_profile


def resolve_config(model: str) -> DecoderConfig:
    """DecoderConfig for an architecture profile name / HF id, or a checkpoint path."""
    if not model.strip():
        raise ProfileError("MODEL is empty: give an architecture profile name (see `workbench profiles`) or a path")
    if Path(model).exists() or model == "smollm2":
        return load_config(model)
    try:
        return get_architecture(model)
    except ProfileError as error:
        raise ProfileError(f"{model}: not a checkpoint path and not an architecture profile ({error})") from None


def _given(option: str, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise PlanError(f"--{option} is empty: give a value or leave the option out")
    return value


def kv_report(
    model: str,
    *,
    device: str | None = None,
    context: int | None = None,
    batch: int | None = None,
    tp: int | None = None,
    kv_dtype: str | None = None,
    utilization: float | None = None,
    block_size: int | None = None,
    weights_dtype: str | None = None,
    engine: str | None = None,
    max_num_batched_tokens: int | None = None,
    allow_long_context: bool = False,
    profile: str = "default",
) -> dict[str, Any]:
    """Plan one deployment; returns {"model", "attention", "device", "engine", "plan"
    (KVPlan.to_dict() with its risk), "findings"}. Not fitting is a ``fail`` finding."""
    for option, value in (("device", device), ("kv-dtype", kv_dtype), ("weights-dtype", weights_dtype),
                          ("engine", engine)):
        _given(option, value)
    config = resolve_config(model)
    loaded = load_profile(profile)
    deployment, thresholds = loaded.deployment, loaded.thresholds.get("kv_memory")
    target = get_device(device if device is not None else deployment.device)
    rules = get_engine(engine if engine is not None else deployment.engine)
    options = deployment_options(config, deployment, batch=batch, context=context, engine=rules, kv_dtype=kv_dtype,
                                 tp=tp, utilization=utilization, block_size=block_size,
                                 max_num_batched_tokens=max_num_batched_tokens)
    options.update(weights_dtype=weights_dtype, allow_long_context=allow_long_context)
    result = plan(config, target, **options)
    findings = analyze_plan(result, config, target, options, thresholds=thresholds, oversize="fail")
    return {
        "model": config.name,
        "attention": config.attention_kind,
        "device": target.name,
        "engine": rules.name,
        "plan": plan_section(result, thresholds),
        "findings": [f.to_dict() for f in findings],
    }


def deployment_options(config: DecoderConfig, deployment: Any, **given: Any) -> dict[str, Any]:
    """The planner's options for a profile's ``[deployment]`` (its context defaulting to the
    model's limit), each replaced by the value in ``given`` when that is not None."""
    options = {
        "batch": deployment.batch, "context": deployment.context or config.max_positions,
        "engine": deployment.engine, "kv_dtype": deployment.kv_dtype, "tp": deployment.tp,
        "utilization": deployment.utilization, "block_size": deployment.block_size,
        "max_num_batched_tokens": deployment.prefill_chunk,
    }  # fmt: skip
    return {name: given[name] if given.get(name) is not None else value for name, value in options.items()}


def plan_section(result: Any, thresholds: dict[str, Any] | None) -> dict[str, Any]:
    """A plan as reports show it: :meth:`KVPlan.to_dict` with its risk level."""
    return {**result.to_dict(), "risk": risk_level(result.fraction_used, thresholds)}
