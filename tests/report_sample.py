"""A realistic report document built from synthetic data, for the report tests.

:func:`sample_report` returns what ``workbench.pipeline.run`` would write for a Mixtral-8x7B-shaped model
(the architecture profile's real config): every section filled with seeded, plausible numbers
shaped as the recorders' ``to_dict()`` output, findings built as :class:`~workbench.findings.Finding`
objects, and the KV section computed by the real planner over catalog devices. ``hostile=True``
plants script-injection strings (:data:`HOSTILE_STRINGS`) in every place user, prompt or
tokenizer text can reach: model name and source, user prompt, token labels, finding text.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

from workbench.analyzers import kv_memory
from workbench.findings import Finding, Where, count_by_status, worst_status
from workbench.memory.planner import plan as kv_plan
from workbench.recorders.attention import STATS as ATTENTION_STATS
from workbench.recorders.residual import STATS as RESIDUAL_STATS
from workbench.report.schema import TIME_FIELDS
from workbench.settings import get_architecture, get_device

HOSTILE_STRINGS = (
    '<img src=x onerror="window.__xss=1">',
    "</script><script>window.__xss=2</script>",
    '"><svg onload=window.__xss=3>',
)
SENTENCE = (
    "The quick brown fox jumps over the lazy dog while the committee reviews the quarterly report "
    "and a transformer attends to every token it has seen so far in the sequence"
).split()
KV_DEVICES = ("h200", "h100-sxm", "a100-80gb", "mi300x")
SATURATED = (3, 5)  # (layer, head) of the planted one-hot head
SINK = (0, 1)
DEAD = (4, 6)  # (layer, expert) that gets no tokens
HOT = (9, 2)  # (layer, expert) that gets far more than its share


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def _softmax_row(rng: random.Random, visible: int, peak: int | None, sharp: float) -> list[float]:
    logits = [rng.gauss(0, 1) for _ in range(visible)]
    if peak is not None:
        logits[min(peak, visible - 1)] += sharp
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = sum(weights)
    return [_round(w / total) for w in weights]


def _attention(rng: random.Random, config: Any, labels: list[str], n_tokens: int) -> dict[str, Any]:
    layers, heads = config.n_layers, config.n_heads
    buckets = 16
    head_means: dict[str, list[list[float | None]]] = {stat: [] for stat in ATTENTION_STATS}
    for layer in range(layers):
        rows = {stat: [] for stat in ATTENTION_STATS}
        for head in range(heads):
            entropy_norm = min(0.95, max(0.05, rng.gauss(0.62 - 0.01 * layer, 0.12)))
            max_prob = min(0.97, max(0.03, 1 - entropy_norm + rng.gauss(0, 0.05)))
            sink = max(0.0, min(0.9, rng.gauss(0.12, 0.06)))
            if (layer, head) == SATURATED:
                entropy_norm, max_prob, sink = 0.018, 0.991, 0.004
            if (layer, head) == SINK:
                sink, max_prob = 0.86, 0.87
            values = {
                "entropy": entropy_norm * math.log(n_tokens / 2), "entropy_norm": entropy_norm,
                "max_prob": max_prob, "argmax": n_tokens / 3, "sink_mass": sink,
                "mean_distance": rng.uniform(5, n_tokens / 4), "logit_std": rng.uniform(1.5, 4.5),
                "logit_gap": rng.uniform(0.5, 4.0),
            }  # fmt: skip
            for stat in ATTENTION_STATS:
                rows[stat].append(_round(values[stat]))
        for stat in ATTENTION_STATS:
            head_means[stat].append(rows[stat])
    by_position = {
        stat: [[[None] + [_round(v * rng.uniform(0.9, 1.1)) for _ in range(buckets - 1)] for v in row]
               for row in head_means[stat]]
        for stat in ATTENTION_STATS
    }  # fmt: skip
    patterns = []
    for layer, head, start, rows, peak_shift, sharp in (
        (0, 1, 0, 24, None, 0.0), (3, 5, 0, 24, 1, 9.0), (12, 7, 8, 20, 0, 2.5), (20, 30, 0, 28, None, 0.0),
    ):  # fmt: skip
        pattern = []
        for query in range(start, start + rows):
            peak = (
                0 if (layer, head) == SINK else (None if peak_shift is None else max(0, query - peak_shift))
            )
            row = _softmax_row(rng, query + 1, peak, sharp or (5.0 if peak == 0 else 0.0))
            pattern.append(row + [0.0] * (start + rows - len(row)))
        patterns.append({"layer": layer, "head": head, "start": start, "pattern": pattern})
    return {
        "n_layers": layers, "n_heads": heads, "n_tokens": n_tokens, "d_head": config.d_head,
        "scale": _round(config.scale), "head_means": head_means, "by_position": by_position,
        "bucket_size": math.ceil(n_tokens / buckets), "patterns": patterns, "patterns_dropped": 2,
        "probe": "natural-T2048-s0", "token_labels": labels,
    }  # fmt: skip


def _residual(rng: random.Random, config: Any) -> dict[str, Any]:
    layers = config.n_layers
    means: dict[str, list[float]] = {}
    for stat in RESIDUAL_STATS:
        curve = []
        for layer in range(layers):
            depth = layer / (layers - 1)
            base = {
                "resid_pre_norm": 8 + 60 * depth, "attn_out_norm": 3 + 4 * depth, "mlp_out_norm": 4 + 10 * depth,
                "attn_ratio": 0.45 * math.exp(-2.2 * depth) + 0.05, "mlp_ratio": 0.6 * math.exp(-1.6 * depth) + 0.08,
                "attn_cos": -0.05 + 0.1 * depth, "mlp_cos": -0.2 + 0.15 * depth,
            }[stat]  # fmt: skip
            curve.append(_round(base * rng.uniform(0.93, 1.07)))
        means[stat] = curve
    return {
        "layer_means": means,
        "by_position": {
            stat: [[_round(v * rng.uniform(0.9, 1.1)) for _ in range(16)] for v in means[stat]]
            for stat in RESIDUAL_STATS
        },  # fmt: skip
        "lens": {
            "positions": list(range(0, 2048, 16)),
            "kl_mean": [_round(9.5 * math.exp(-4.0 * layer / layers) + 0.02) for layer in range(layers - 1)]
            + [0.0],
            "top1_mean": [_round(min(1.0, 0.02 + (layer / (layers - 1)) ** 2.2)) for layer in range(layers)],
        },
        "probe": "natural-T2048-s0",
    }


def _routing(rng: random.Random, config: Any, n_tokens: int) -> dict[str, Any]:
    experts, top_k = config.n_experts, config.top_k
    layers = []
    for layer in range(config.n_layers):
        weights = [rng.uniform(0.7, 1.3) for _ in range(experts)]
        if layer == DEAD[0]:
            weights[DEAD[1]] = 0.0
        if layer == HOT[0]:
            weights[HOT[1]] = 4.5
        total = sum(weights)
        load = [round(n_tokens * top_k * w / total) for w in weights]
        load[0] += n_tokens * top_k - sum(load)
        importance = [_round(w / total * rng.uniform(0.95, 1.05)) for w in weights]
        coselect = [[load[e] if e == f else int(load[e] * load[f] / (n_tokens * top_k * 2)) for f in range(experts)]
                    for e in range(experts)]  # fmt: skip
        entropy_norm = _round(0.55 + 0.1 * rng.random())
        layers.append({
            "layer": layer, "n_experts": experts, "top_k": top_k, "tokens": n_tokens, "load": load,
            "importance": importance, "entropy": _round(entropy_norm * math.log(experts)),
            "entropy_norm": entropy_norm, "coselect": coselect,
            "sample": {"positions": [0, 1023, 2047], "experts": [[1, 4], [0, 6], [3, 2]],
                       "weights": [[0.61, 0.39], [0.55, 0.45], [0.7, 0.3]]},
        })  # fmt: skip
    return {"layers": layers}


def _loss_curve(
    rng: random.Random, length: int, trained: int, kind: str, buckets: int = 128
) -> dict[str, Any]:
    size = math.ceil(length / buckets)
    losses = []
    for index in range(math.ceil((length - 1) / size)):
        position = index * size
        if kind == "natural":
            base = 2.1 + 3.0 / math.sqrt(1 + position / 8)
        else:  # a 512-token random block, then its repeats: copied once seen
            base = 9.8 if position < 512 else 0.4
        if position > trained:
            base += 2.4 * (1 - math.exp(-(position - trained) / (trained / 3)))
        losses.append(_round(base + rng.gauss(0, 0.04)))
    inside = [v for i, v in enumerate(losses) if i * size < trained]
    beyond = [v for i, v in enumerate(losses) if i * size >= trained]
    return {
        "kind": kind, "length": length, "bucket_size": size, "loss_by_position": losses,
        "in_context_loss": _round(sum(inside) / len(inside)),
        "beyond_loss": _round(sum(beyond) / len(beyond)) if beyond else None, "error": None,
    }  # fmt: skip


def _length(rng: random.Random, config: Any) -> dict[str, Any]:
    trained = config.trained_context
    probes = [_loss_curve(rng, length, trained, "natural") for length in (trained // 2, trained, trained * 2)]
    probes.append(_loss_curve(rng, trained * 2, trained, "copy"))
    probes.append({"kind": "natural", "length": trained * 4, "bucket_size": 512, "loss_by_position": [],
                   "in_context_loss": None, "beyond_loss": None,
                   "error": "skipped: 131,072 tokens exceed probes.max_tokens (65,536)"})  # fmt: skip
    return {
        "trained_context": trained, "max_positions": config.max_positions, "positions": config.positions,
        "probes": probes, "effective_context": {"natural": trained + trained // 8, "copy": trained},
    }  # fmt: skip


def _kv(config: Any, batch: int, context: int, deployment: str) -> tuple[dict[str, Any], list[Finding]]:
    devices = [get_device(name) for name in KV_DEVICES]
    contexts = [2**k for k in range(10, 18) if 2**k <= config.max_positions]
    rows = []
    for device in devices:
        curve = []
        for ctx in contexts:
            p = kv_plan(config, device, batch=batch, context=ctx)
            curve.append({"context": ctx, "total_bytes": p.total_bytes, "kv_bytes": p.kv_bytes,
                          "weights_bytes": p.weights_bytes})  # fmt: skip
        head = kv_plan(config, device, batch=batch, context=context)
        rows.append({"name": device.name, "usable_bytes": head.device_bytes, "memory_bytes": head.device_memory_bytes,
                     "curve": curve, "max_context": head.max_context,
                     "max_context_reason": head.max_context_reason})  # fmt: skip
    target = get_device(deployment)
    plan = kv_plan(config, target, batch=batch, context=context)
    findings = kv_memory.analyze(config, target, batch, context)
    document = {**plan.to_dict(), "risk": kv_memory.risk_level(plan.fraction_used)}
    return {"batch": batch, "kv_dtype": plan.kv_dtype, "plan": document, "devices": rows}, findings


def _timing(rng: random.Random, config: Any) -> dict[str, Any]:
    per_layer = []
    for layer in range(config.n_layers):
        # Mixtral-8x7B, 512 tokens on a many-core CPU: about 0.7 s per layer.
        attn, mlp, router = rng.uniform(150e3, 175e3), rng.uniform(480e3, 560e3), rng.uniform(2e3, 3e3)
        other = rng.uniform(8e3, 14e3)
        per_layer.append({"layer": layer, "mlp_kind": "moe", "attn_us": _round(attn), "mlp_us": _round(mlp),
                          "router_us": _round(router), "other_us": _round(other),
                          "block_us": _round(attn + mlp + router + other)})  # fmt: skip
    totals = {key: _round(sum(row[key] for row in per_layer))
              for key in ("attn_us", "mlp_us", "router_us", "other_us", "block_us")}  # fmt: skip
    totals["forward_us"] = _round(totals["block_us"] + 95e3)
    totals["outside_blocks_us"] = _round(totals["forward_us"] - totals["block_us"])
    ops = [("aten::mm", 704, 16.1e6), ("aten::bmm", 128, 3.9e6), ("aten::_softmax", 96, 1.2e6),
           ("aten::mul", 1280, 0.74e6), ("aten::silu", 256, 0.41e6), ("aten::add", 512, 0.39e6),
           ("aten::index_select", 256, 0.31e6), ("aten::topk", 32, 0.14e6), ("aten::cat", 96, 0.09e6),
           ("aten::copy_", 220, 0.07e6)]  # fmt: skip
    flops = 2 * 12_900_000_000 * 512
    wall = totals["forward_us"] / 1e6 * 0.92
    return {
        "run_name": "smoke", "device": "cpu", "batch": 1, "seq_len": 512, "warmup": 1, "steps": 3,
        "wall_seconds": _round(wall), "wall_seconds_runs": [_round(wall * f) for f in (1.01, 0.99, 1.0)],
        "profiled_wall_seconds": _round(wall * 1.08),
        "top_ops": [{"name": n, "calls": c, "self_cpu_us": float(us), "cpu_total_us": float(us) * 1.15}
                    for n, c, us in ops],  # fmt: skip
        "components": {"per_layer": per_layer, "totals": totals},
        "flops": flops, "flops_breakdown": None, "achieved_flops_per_second": _round(flops / wall),
        "peak_flops": None, "fraction_of_peak": None,
        "trace": {"tensorboard_dir": "trace/smoke", "chrome_trace": "trace/smoke/trace.json"},
    }  # fmt: skip


def _findings(config: Any, hostile_text: str) -> list[Finding]:
    layer, head = SATURATED
    return [
        Finding("attention_saturation", "onehot_heads", "fail",
                f"head L{layer} H{head} is one-hot at 97% of positions{hostile_text}",
                Where(layer=layer, head=head), metric="onehot_fraction", value=0.97, threshold=0.5,
                fix="check the attention scale (1/sqrt(d_head)) and logit soft-capping of this layer",
                details={"entropy_norm": 0.018, "max_prob": 0.991}),
        Finding("attention_saturation", "sink_heads", "info", "head L0 H1 is an attention sink (86% on token 0)",
                Where(layer=SINK[0], head=SINK[1]), metric="sink_mass", value=0.86, threshold=0.5),
        Finding("attention_saturation", "logit_scale", "pass", "attention logit spread is normal in every layer",
                metric="max_logit_std", value=4.4, threshold=8.0),
        Finding("routing_collapse", "dead_experts", "warn", f"expert {DEAD[1]} of layer {DEAD[0]} received no tokens",
                Where(layer=DEAD[0], expert=DEAD[1], sublayer="moe"), metric="load_share", value=0.0,
                threshold=0.0125, fix="raise the load-balancing loss coefficient or re-initialise the router"),
        Finding("routing_collapse", "load_balance", "warn",
                f"expert {HOT[1]} of layer {HOT[0]} takes 3.7x its fair share of tokens",
                Where(layer=HOT[0], expert=HOT[1], sublayer="moe"), metric="max_load_violation", value=2.7,
                threshold=1.0, fix="an auxiliary balance loss (Switch Transformer) evens the load"),
        Finding("routing_collapse", "balance_loss", "pass", "auxiliary balance loss 1.12 across layers",
                metric="balance_loss", value=1.12, threshold=1.5),
        Finding("length_extrapolation", "beyond_trained", "fail",
                f"natural-text loss rises 1.9 nats past the trained context of {config.trained_context:,}",
                Where(positions=(config.trained_context, 2 * config.trained_context)), metric="loss_increase",
                value=1.9, threshold=0.5, fix="serve at most the trained context, or extend it with RoPE scaling "
                "(YaRN) and a short fine-tune"),
        Finding("length_extrapolation", "repeated_copy", "pass", "repeated blocks are copied within the context",
                metric="loss_ratio", value=0.04, threshold=1.25),
        Finding("length_extrapolation", "max_positions", "skip", "131,072 tokens exceed probes.max_tokens"),
    ]  # fmt: skip


def sample_report(hostile: bool = False, omit: Iterable[str] = (), seed: int = 0) -> dict[str, Any]:
    """A full version-1 report document; sections named in ``omit`` are null (not run)."""
    rng = random.Random(seed)
    config = get_architecture("mixtral-8x7b")
    n_tokens = 2048
    labels = [(" " if i else "") + SENTENCE[i % len(SENTENCE)] for i in range(n_tokens)]
    labels[7] = "\n"
    name, source, prompt, extra = config.name, "profiles/architectures/mixtral-8x7b.toml", None, ""
    if hostile:
        for index, text in enumerate(HOSTILE_STRINGS):
            labels[2 + 3 * index] = text
        name = f"evil{HOSTILE_STRINGS[0]}/../../etc"
        source = f"/tmp/{HOSTILE_STRINGS[2]}"
        prompt = "Summarise: " + " ".join(HOSTILE_STRINGS)
        extra = " " + HOSTILE_STRINGS[1]
    kv, kv_findings = _kv(config, batch=8, context=32768, deployment="h200")
    findings = _findings(config, extra) + kv_findings
    if hostile:
        findings.append(Finding(HOSTILE_STRINGS[0], "user_text", "warn", HOSTILE_STRINGS[2],
                                Where(sublayer=HOSTILE_STRINGS[1]), fix=HOSTILE_STRINGS[0]))  # fmt: skip
    analyzers: dict[str, list[Finding]] = {}
    for finding in findings:
        analyzers.setdefault(finding.analyzer, []).append(finding)
    overall = worst_status(findings)
    probes = [
        {"name": "natural-T2048-s0", "kind": "natural", "length": 2048, "seed": 0,
         "description": "2048 tokens of the shipped corpus (tokenizer), seed 0", "text": None},
        {"name": "repeated-b32-T512-s0", "kind": "repeated", "length": 512, "seed": 0,
         "description": "a random block of 32 tokens repeated to 512 tokens, seed 0", "text": None},
        {"name": "random-T512-s0", "kind": "random", "length": 512, "seed": 0,
         "description": "512 uniform random token ids, seed 0", "text": None},
    ]  # fmt: skip
    if prompt is not None:
        probes.append({"name": "user-T24", "kind": "user", "length": 24, "seed": None,
                       "description": "user text, 24 tokens (tokenizer)", "text": prompt})  # fmt: skip
    report: dict[str, Any] = {
        "schema": "transformer-workbench/report", "schema_version": 1,
        "tool": {"name": "transformer-workbench", "version": "0.1.0", "torch": "2.13.0+cpu",
                 "transformers": "5.0.0", "python": "3.11.9"},
        "run": {"id": "mixtral-8x7b-20261123T145500Z", "command": "diagnose",
                "created_utc": "2026-11-23T14:55:00Z", "duration_seconds": 48.25, "profile": "default",
                "seed": seed, "device": "cpu", "dtype": "float32", "backend": "native"},
        "time_fields": list(TIME_FIELDS),
        "model": {"source": source, "name": name, "model_type": config.model_type, "config": config.to_dict(),
                  "n_params": config.n_params, "weights_quant": None},
        "summary": {"status": overall if overall in ("warn", "fail") else "pass",
                    "counts": count_by_status(findings),
                    "analyzers": {key: worst_status(items) for key, items in analyzers.items()}},
        "findings": [finding.to_dict() for finding in findings],
        "probes": probes,
        "attention": _attention(rng, config, labels, n_tokens),
        "residual": _residual(rng, config),
        "routing": _routing(rng, config, n_tokens),
        "length": _length(rng, config),
        "kv": kv,
        "timing": _timing(rng, config),
        "artifacts": {"report_json": "report.json", "report_html": "report.html", "trace_dir": "trace/smoke",
                      "chrome_trace": "trace/smoke/trace.json"},
    }  # fmt: skip
    for section in omit:
        report[section] = None
    return report
