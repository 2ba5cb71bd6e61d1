"""Recording overhead and memory: what watching SmolLM2 costs, against not watching it.

Run by hand, not by pytest:

    .venv/bin/python benchmarks/bench_recording.py [--tokens 2048] [--repeats 3]
        [--memory-tokens 8192] [--nnsight-tokens 2048] [--cap-gib 12] [--profile] [--no-write]

1. Time: the forward ``model(tokens)`` of SmolLM2-135M (fp32, CPU, natural text) with
   attention + residual (with the logit lens) + routing + loss recording, against the same call with
   nothing recording. gpt-fast discipline: one warm-up of every variant discarded, variants
   interleaved so machine noise hits all of them, the minimum of N runs kept. The ratio is the
   result (target <= 1.5); a per-recorder breakdown, the lens at 64 positions, and
   ``model.hidden(tokens)`` (no logits: the loss and the lens then unembed for themselves) are
   context.
2. Memory: peak RSS of a fresh process recording attention statistics for all 30 layers x 9 heads
   at ``--memory-tokens`` (target <= 4 GiB for the whole process), beside what the alternatives
   hold for the same job: transformers eager ``output_attentions=True`` (every layer's
   ``[heads, T, T]`` weights; tried under an address-space cap, ``--cap-gib``), and nnsight saving
   each layer's attention weights (measured at ``--nnsight-tokens``, and analytic). Peak RSS is
   the kernel's VmHWM, reset after loading the model (``/proc/self/clear_refs``), so it is the
   whole process during the forward: weights, activations and records.

``--profile`` prints a torch.profiler table of one recorded forward (the tool used to find where
recording time went). Appends a section to benchmarks/RESULTS.md unless ``--no-write``;
``--skip-time`` / ``--skip-memory`` reuse the other part from the previous runs (kept in the system
temp folder, time per thread count), so a part can be measured again alone. Wall time with 2 threads is only meaningful on
an otherwise idle machine (a thread descheduled by other work stalls every parallel op); process
CPU time with ``--threads 1`` is the robust figure on a shared one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from measure import cap_address_space, gib, measured, run_child

SMOLLM2_LAYERS, SMOLLM2_HEADS = 30, 9


# --- measuring ------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - start_cpu


def natural_tokens(model, length: int) -> torch.Tensor:
    from workbench.inputs import natural_text_tokens
    from workbench.loading.tokenizer import load_tokenizer

    return natural_text_tokens(load_tokenizer("smollm2"), length, vocab_size=model.config.vocab_size)


# --- 1. time ----------------------------------------------------------------------------------


def time_recording(length: int, repeats: int) -> dict:
    import workbench

    model = workbench.load_model("smollm2")
    tokens = natural_tokens(model, length)

    def recorded(call: Callable[[torch.Tensor], object] = model, **what: object) -> Callable[[], object]:
        def run() -> object:
            with workbench.record(model, **what) as recording:
                call(tokens)
            return recording

        return run

    everything = {"attention": True, "residual": True, "routing": True, "loss": True}
    variants: dict[str, Callable[[], object]] = {
        "nothing": lambda: model(tokens),
        "everything": recorded(**everything),
        "lens64": recorded(**everything, lens_positions=64),
        "no_lens": recorded(**everything, lens=False),
        "attention": recorded(attention=True),
        "residual": recorded(residual=True),
        "loss": recorded(loss=True),
        "hidden": lambda: model.hidden(tokens),
        "hidden_everything": recorded(model.hidden, **everything),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for fn in variants.values():  # warm-up, discarded
            fn()
        for _ in range(repeats):
            for name, fn in variants.items():
                wall, cpu = timed(fn)
                seconds[name].append(wall)
                cpu_seconds[name].append(cpu)
        recording = variants["everything"]()
    return {
        "tokens": length,
        "repeats": repeats,
        "load_average": os.getloadavg(),
        "seconds": {name: min(values) for name, values in seconds.items()},
        "cpu_seconds": {name: min(values) for name, values in cpu_seconds.items()},
        "all_seconds": seconds,
        "loss": recording.loss.mean,
        "threads": torch.get_num_threads(),
    }


def profile_recording(length: int) -> str:
    import workbench

    model = workbench.load_model("smollm2")
    tokens = natural_tokens(model, length)
    with torch.no_grad():
        with workbench.record(model, attention=True, residual=True, loss=True):
            model(tokens)  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            with workbench.record(model, attention=True, residual=True, loss=True):
                model(tokens)
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


# --- 2. memory, each in a fresh process ------------------------------------------------------


def _hf_smollm2(attn_implementation: str):
    import transformers

    from workbench.loading.sources import smollm2_path

    path = smollm2_path()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation=attn_implementation
    ).eval()


def child(kind: str, length: int) -> dict:
    """One memory measurement; runs in its own process (``--child``)."""
    import workbench

    result: dict = {"kind": kind, "tokens": length}
    if kind.startswith("workbench"):
        model = workbench.load_model("smollm2")
        tokens = natural_tokens(model, length)
    else:
        model = _hf_smollm2("eager")
        tokens = natural_tokens(workbench.load_model("smollm2"), length)  # then dropped

    @torch.no_grad()
    def run() -> None:
        if kind == "workbench-plain":
            model.hidden(tokens)
        elif kind == "workbench-attention":
            with workbench.record(model, attention=True) as recording:
                model.hidden(tokens)
            stats = recording.attention.entropy_norm
            result["record_shape"] = list(stats.shape)
            result["entropy_norm_mean"] = float(torch.nanmean(stats))
        elif kind == "hf-output-attentions":
            layers_done = []
            handles = [layer.register_forward_hook(lambda *a, i=i: layers_done.append(i))
                       for i, layer in enumerate(model.model.layers)]
            try:
                output = model(tokens, output_attentions=True, use_cache=False, logits_to_keep=1)
                result["held_bytes"] = sum(a.numel() * a.element_size() for a in output.attentions)
            finally:
                result["layers_done"] = len(layers_done)
                for handle in handles:
                    handle.remove()
        elif kind == "nnsight-save-weights":
            from nnsight import NNsight

            traced = NNsight(model)
            saved: list[torch.Tensor] = []
            with traced.trace(tokens, use_cache=False, logits_to_keep=1):
                for layer in traced.model.layers:
                    saved.append(layer.self_attn.output[1].save())
            result["held_bytes"] = sum(w.numel() * w.element_size() for w in saved)
        elif kind == "nnsight-backend":
            from workbench.backends.nnsight import record_hf

            recording = record_hf(model, tokens, residual=False, routing=False, loss=False)
            result["record_shape"] = list(recording.attention.entropy_norm.shape)
        else:
            raise ValueError(f"unknown child kind {kind!r}")

    return measured(result, run)


def run_memory_job(kind: str, length: int, cap_gib: float) -> dict:
    """:func:`child` in a fresh interpreter under an address-space cap of ``cap_gib``."""
    result = run_child(__file__, kind, length, cap_gib)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    result["children_max_rss_bytes"] = children  # the largest child so far (a cross-check)
    return result


def report(timings: list[dict], memory: list[dict], args: argparse.Namespace) -> str:
    import inspect

    import transformers

    import workbench
    from workbench.recorders.attention import STATS as ATTENTION_STATS

    lens_positions = inspect.signature(workbench.record).parameters["lens_positions"].default

    lines = [
        f"## Recording overhead and memory ({datetime.date.today().isoformat()})",
        "",
        f"SmolLM2-135M fp32 (30 layers x 9 heads), batch 1, natural text, CPU ({os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"transformers {transformers.__version__}.",
    ]
    for timing in timings:
        wall, cpu = timing["seconds"], timing["cpu_seconds"]
        lines += [
            "",
            f"### Time at {timing['tokens']} tokens (min of {timing['repeats']} interleaved runs, "
            f"{timing['threads']} thread(s), one warm-up discarded; load average "
            f"{timing['load_average'][1]:.1f} during the run, this benchmark included)",
            "",
            f"**Recording attention + residual (logit lens at {lens_positions} positions) + routing + loss: "
            f"{wall['everything'] / wall['nothing']:.2f}x** the same forward with nothing recording in wall "
            f"time ({cpu['everything'] / cpu['nothing']:.2f}x in process CPU time; target <= 1.5). "
            f"Recorded loss {timing['loss']:.3f} nats/token.",
            "",
            "| forward | ratio, wall | ratio, CPU | wall s | CPU s |",
            "|---|---|---|---|---|",
        ]
        names = {
            "nothing": "`model(tokens)`, nothing recording",
            "everything": f"`model(tokens)`, attention + residual (lens at {lens_positions} positions) "
                          "+ routing + loss",
            "lens64": "the same with the lens at 64 positions",
            "no_lens": "the same without the logit lens",
            "attention": "attention statistics only",
            "residual": f"residual write stats + logit lens ({lens_positions} positions) only",
            "loss": "loss only (read off the logits)",
            "hidden": "`model.hidden(tokens)` (no logits), nothing recording",
            "hidden_everything": "`model.hidden(tokens)`, everything (the loss and lens unembed for themselves)",
        }
        lines += [
            f"| {label} | **{wall[name] / wall['nothing']:.2f}** | {cpu[name] / cpu['nothing']:.2f} "
            f"| {wall[name]:.2f} | {cpu[name]:.2f} |"
            for name, label in names.items()
        ]
        lines += ["", "`model.hidden(tokens)` is what long inputs use (their logits alone are T x vocab x 4 "
                      f"bytes); recording everything on it costs "
                      f"{wall['hidden_everything'] / wall['hidden']:.2f}x that forward."]
    if memory:
        n_mem = args.memory_tokens
        lines += [
            "",
            f"### Peak memory (fresh process each; address space capped at {args.cap_gib:g} GiB)",
            "",
            "| job | tokens | peak RSS of the process during the forward | held attention weights "
            "| outcome |",
            "|---|---|---|---|---|",
        ]
        for m in memory:
            held = m.get("held_bytes")
            held_text = gib(held) if held else "-"
            if m["kind"] in ("hf-output-attentions", "nnsight-save-weights") and not held:
                held_text = f"would be {gib(attention_bytes(m['tokens']))}"
            error = m.get("error", "?")
            if "allocate memory" in error:
                error = "out of memory under the cap"
            outcome = "ok" if m.get("ok") else f"failed: {error}"
            if m["kind"] == "hf-output-attentions" and "layers_done" in m:
                outcome += f" (after {m['layers_done']} of {SMOLLM2_LAYERS} layers)"
            label = {
                "workbench-plain": "workbench forward, nothing recording",
                "workbench-attention": "**workbench: attention statistics, all layers x heads**",
                "hf-output-attentions": "transformers eager, `output_attentions=True`",
                "nnsight-save-weights": "nnsight, saving every layer's attention weights",
                "nnsight-backend": "workbench nnsight backend (`record_hf`, attention)",
            }[m["kind"]]
            peak = gib(m["peak_bytes"]) if "peak_bytes" in m else "-"
            lines.append(f"| {label} | {m['tokens']} | {peak} | {held_text} | {outcome} |")
        lines += [
            "",
            f"Analytic: every layer's weights at {n_mem} tokens are {SMOLLM2_LAYERS} x {SMOLLM2_HEADS} x "
            f"{n_mem}^2 x 4 B = {attention_bytes(n_mem) / 1e9:.0f} GB ({gib(attention_bytes(n_mem))}); "
            f"at {args.nnsight_tokens} tokens {gib(attention_bytes(args.nnsight_tokens))}. "
            "The workbench keeps "
            f"{len(ATTENTION_STATS)} numbers per (layer, head, position): "
            f"{gib(len(ATTENTION_STATS) * SMOLLM2_LAYERS * SMOLLM2_HEADS * n_mem * 4)} of records.",
        ]
    return "\n".join(lines) + "\n"


def attention_bytes(length: int) -> int:
    from workbench.backends.nnsight import attention_weights_bytes

    return attention_weights_bytes(SMOLLM2_LAYERS, SMOLLM2_HEADS, length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="length for the time measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-tokens", type=int, default=8192)
    parser.add_argument("--nnsight-tokens", type=int, default=2048)
    parser.add_argument("--cap-gib", type=float, default=12.0, help="address-space cap of each child")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table and stop")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        cap_address_space(args.cap_gib)
        print(json.dumps(child(args.child, args.tokens)), flush=True)
        return
    if args.profile:
        print(profile_recording(args.tokens))
        return
    # Each part is kept in a state file, so time and memory can be measured in separate runs
    # (e.g. time again when the machine is quieter) and still be reported together.
    state_path = Path(tempfile.gettempdir()) / "workbench_bench_recording.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    timings: dict[str, dict] = state.get("timings", {})  # by thread count
    if not args.skip_time:
        timing = time_recording(args.tokens, args.repeats)
        print(json.dumps(timing, indent=1), flush=True)
        timings[str(timing["threads"])] = timing
    memory = state.get("memory", []) if args.skip_memory else []
    if not args.skip_memory:
        jobs = [
            ("workbench-plain", args.memory_tokens),
            ("workbench-attention", args.memory_tokens),
            ("hf-output-attentions", args.memory_tokens),
            ("nnsight-save-weights", args.nnsight_tokens),
            ("nnsight-backend", args.nnsight_tokens),
        ]
        for kind, length in jobs:
            memory.append(run_memory_job(kind, length, args.cap_gib))
            print(json.dumps(memory[-1]), flush=True)
    state_path.write_text(json.dumps({"timings": timings, "memory": memory}))
    text = report([timings[key] for key in sorted(timings, key=int, reverse=True)], memory, args)
    print(text)
    if not args.no_write:
        results = Path(__file__).with_name("RESULTS.md")
        previous = results.read_text() if results.exists() else "# Benchmark results\n"
        results.write_text(previous.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()
