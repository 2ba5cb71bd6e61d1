"""The pipeline on the nnsight backend: for architectures the hooked decoder does not implement.

The transformers model itself is loaded (eager attention, so attention weights exist) and traced
with nnsight; the records are the same types as the native ones, so the same analyzers read them.
What needs the hooked decoder (the length sweep's chunked loss at long context, the per-block
profiler ranges) or a DecoderConfig (the KV plan) is reported as skipped, with the reason.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import torch

from workbench.findings import Finding

SKIPPED = {
    "length": ("length_extrapolation", "the length sweep runs on the hooked decoder only"),
    "kv": ("kv_memory", "the KV plan needs a config the workbench understands (use `workbench kv` with an "
                        "architecture profile)"),
}


def load_hf_model(source: str, dtype: str, device: str) -> Any:
    from workbench.errors import CheckpointError
    from workbench.loading.checkpoint import parse_dtype
    from workbench.loading.sources import resolve

    kind, path = resolve(source)
    if kind != "hf":
        raise CheckpointError(f"{path}: the nnsight backend takes a transformers checkpoint folder")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path), dtype=parse_dtype(dtype), attn_implementation="eager")
    except (OSError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: transformers cannot load it ({first})") from None
    return model.to(device).eval()


def run_nnsight(source: str, options: Any, profile: Any, seed: int, say) -> dict[str, Any]:
    from workbench.analyzers.nonfinite import scan_weights
    from workbench.backends.nnsight import describe, record_hf
    from workbench.loading.tokenizer import load_tokenizer, token_labels
    from workbench.pipeline import run as pipeline

    started, created = time.perf_counter(), datetime.now(UTC)
    say("loading model (transformers)")
    model = load_hf_model(source, options.dtype, options.device)
    layout = describe(model)
    hf_config = model.config
    shape = SimpleNamespace(
        vocab_size=int(hf_config.vocab_size), positions="unknown",
        max_positions=int(getattr(hf_config, "max_position_embeddings", 0) or 1 << 20),
    )
    tokenizer = load_tokenizer(source)
    probe = pipeline._main_probe(options, profile, shape, tokenizer, seed)
    patterns = pipeline.pattern_requests(layout.n_layers, layout.n_heads, probe.length)
    wanted = pipeline.COMMANDS[options.command]
    say(f"recording a {probe.length}-token {probe.kind} probe through nnsight")
    with torch.no_grad():
        recording = record_hf(model, probe.tokens.to(options.device), attention="attention" in wanted,
                              residual="residual" in wanted, routing="routing" in wanted,
                              loss="loss" in wanted, patterns=patterns)
    findings: list[Finding] = scan_weights(model) if "nonfinite" in wanted else []
    sections: dict[str, Any] = dict.fromkeys(pipeline.SECTIONS)
    labels = token_labels(tokenizer, probe.tokens[0, : pipeline.PATTERN_ROWS].tolist())
    # the same analyzers and report sections as the native pipeline
    findings += pipeline._analyze_records(recording, SimpleNamespace(n_experts=layout.n_experts), profile,
                                          wanted, sections, probe, labels)
    for key, (analyzer, reason) in SKIPPED.items():
        if key in wanted:
            findings.append(Finding(analyzer, "backend", "skip", f"not run on the nnsight backend: {reason}"))
    model_type = str(getattr(hf_config, "model_type", "unknown"))
    model_info = {"source": str(source), "name": str(getattr(hf_config, "_name_or_path", "") or model_type),
                  "model_type": model_type, "config": hf_config.to_diff_dict(),
                  "n_params": sum(p.numel() for p in model.parameters()), "weights_quant": None}
    return pipeline.document(options, profile.name, seed, created, started, model_info, findings, probe, sections)
