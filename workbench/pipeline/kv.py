"""`workbench kv`: KV-cache and weights memory for a deployment, from a config alone.

MODEL is an architecture profile name or Hugging Face id from ``profiles/architectures``, or
anything :func:`workbench.loading.checkpoint.load_config` reads (checkpoint folder, config.json, .gguf);
no weights are loaded. Unset options come from the run profile's ``[deployment]`` table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.analyzers import kv_memory
from workbench.findings import Finding
from workbench.loading.checkpoint import load_config
from workbench.settings import ProfileError, get_architecture, get_device, load_profile


def resolve_config(model: str):
    """DecoderConfig for an architecture profile name / HF id, or a checkpoint path."""
    if Path(model).exists() or model == "smollm2":
        return load_config(model)
    try:
        return get_architecture(model)
    except ProfileError as error:
        raise ProfileError(f"{model}: not a checkpoint path and not an architecture profile ({error})") from None


def kv_report(model: str, *, device: str | None = None, context: int | None = None, batch: int | None = None,
              tp: int | None = None, kv_dtype: str | None = None, utilization: float | None = None,
              block_size: int | None = None, weights_dtype: str | None = None,
              profile: str = "default") -> dict[str, Any]:
    """Plan one deployment; returns {"model", "device", "plan" (KVPlan.to_dict()), "findings"}."""
    config = resolve_config(model)
    loaded = load_profile(profile)
    deployment, thresholds = loaded.deployment, loaded.thresholds.get("kv_memory")
    target = get_device(device or deployment.device)
    options = dict(
        kv_dtype=kv_dtype if kv_dtype is not None else deployment.kv_dtype,
        tp=tp or deployment.tp,
        utilization=utilization if utilization is not None else deployment.utilization,
        block_size=block_size or deployment.block_size,
        prefill_chunk=deployment.prefill_chunk,
        weights_dtype=weights_dtype,
        thresholds=thresholds,
    )
    batch = batch or deployment.batch
    context = context or deployment.context or config.max_positions
    plan = kv_memory.plan(config, target, batch=batch, context=context, **options)
    findings: list[Finding] = kv_memory.analyze(config, target, batch, context, **options)
    return {
        "model": config.name,
        "attention": config.attention_kind,
        "device": target.name,
        "plan": plan.to_dict(),
        "findings": [f.to_dict() for f in findings],
    }
