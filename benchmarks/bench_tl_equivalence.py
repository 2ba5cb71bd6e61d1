"""The hooked decoder against TransformerLens 4.3, hook by hook, on every family.

Run by hand, not by pytest or CI. For each family and variant of ``tests/helpers.FAMILY_CASES``
a tiny, randomly initialised transformers model (fp32) is saved with its tiny character
tokenizer; TransformerLens wraps it with ``TransformerBridge.boot_transformers(folder,
hf_model=..., tokenizer=...)`` (no weight processing: the bridge keeps the checkpoint's
weights, as the workbench does) and the workbench loads the folder with ``load_model``. Both run
``run_with_cache`` on the same [2, 12] random tokens (``attn.hook_result`` and ``hook_mlp_in``
switched on on both sides, then a second run with the per-head q/k/v inputs switched on); for
every hook name both caches hold, the
max abs difference is taken (shapes must agree; a shape mismatch is reported, not compared; attention scores are
compared where both sides left a key visible).

Set up TransformerLens in its own virtual environment (outside the repo) and run the script with
it; the workbench is imported from this checkout (it needs only torch, transformers, safetensors,
gguf and accelerate, all present there):

    python3 -m venv /tmp/tl-venv && /tmp/tl-venv/bin/pip install torch==2.13.0 && \\
        /tmp/tl-venv/bin/pip install torch==2.13.0 transformer-lens==4.3.0 "transformers==5.23.*" gguf accelerate pytest
    /tmp/tl-venv/bin/python benchmarks/bench_tl_equivalence.py > /tmp/tl-equivalence.md

It prints a markdown table (one row per family) and, per family, the hooks only one side has.
"""

from __future__ import annotations

import re
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import torch  # noqa: E402
from helpers import FAMILY_CASES, tiny_tokenizer  # noqa: E402

import workbench  # noqa: E402

BATCH, LENGTH = 2, 12
ALIASES = {f"embed_norm.{point}": f"embed_ln.{point}" for point in ("hook_scale", "hook_normalized")}


def _pattern(name: str) -> str:
    """``blocks.3.mlp.experts.1.hook_post`` -> ``blocks.{l}.mlp.experts.{e}.hook_post``."""
    name = re.sub(r"^blocks\.\d+\.", "blocks.{l}.", name)
    return re.sub(r"experts\.\d+\.", "experts.{e}.", name)


def compare(case) -> dict:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    reference = case.hf_model()
    tokenizer = tiny_tokenizer()
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        model = workbench.load_model(folder)
        bridge = TransformerBridge.boot_transformers(  # a saved tokenizer: the bridge reloads it
            folder, hf_model=case.hf_model(), tokenizer=AutoTokenizer.from_pretrained(folder), device="cpu", dtype=torch.float32
        )
    tokens = torch.randint(3, reference.config.vocab_size, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))
    bridge.set_use_attn_result(True)
    bridge.set_use_hook_mlp_in(True)
    with torch.no_grad():
        tl_logits, tl_cache = bridge.run_with_cache(tokens)
    model.set_use_attn_result(True)
    wb_logits, wb_cache = model.run_with_cache(tokens)
    split = {}
    try:  # the per-head inputs, on both sides
        bridge.set_use_split_qkv_input(True)
        model.set_use_split_qkv_input(True)
        with torch.no_grad():
            _, tl_split = bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("_input"))
        _, wb_split = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("_input"))
        split = {n: (tl_split[n], wb_split[n]) for n in set(tl_split.keys()) & set(wb_split.keys())}
    except Exception as error:  # noqa: BLE001  reported, not fatal
        split = {"error": str(error)[:100]}
    # The same hook under another module name (the workbench's follows the checkpoint's).
    wb_cache = {ALIASES.get(name, name): wb_cache[name] for name in wb_cache}
    tl_names = set(tl_cache.keys())
    wb_names = set(wb_cache.keys())
    common = sorted(tl_names & wb_names)
    diffs, shape_mismatch, raw = {}, [], {}
    for name in common:
        a, b = tl_cache[name], wb_cache[name]
        if tuple(a.shape) != tuple(b.shape):
            shape_mismatch.append(f"{name} TL {tuple(a.shape)} vs workbench {tuple(b.shape)}")
            continue
        a, b = a.float(), b.float()
        if name.endswith("hook_attn_scores"):  # masked scores: -inf here, a large negative there
            seen = (a > -1e30) & (b > -1e30)
            if not torch.equal(seen, (b > -1e30)):
                shape_mismatch.append(f"{name}: the masks differ")
                continue
            if model.config.positions == "alibi":
                # transformers' BLOOM adds m * j, the workbench -m * (i - j): rows differ by the
                # constant m * i, which softmax ignores. Compare rows shifted to a zero maximum.
                raw[name] = float((a - b)[seen].abs().max())
                a = a.masked_fill(~seen, float("-inf"))
                b = b.masked_fill(~seen, float("-inf"))
                a, b = a - a.amax(-1, keepdim=True), b - b.amax(-1, keepdim=True)
            a, b = a[seen], b[seen]
        diffs[name] = float((a - b).abs().max())
    if "error" in split:
        shape_mismatch.append(f"split qkv input failed: {split['error']}")
    else:
        for name, (a, b) in split.items():
            if tuple(a.shape) != tuple(b.shape):
                shape_mismatch.append(f"{name} TL {tuple(a.shape)} vs workbench {tuple(b.shape)}")
            else:
                diffs[name] = float((a.float() - b.float()).abs().max())
    worst = max(diffs, key=diffs.get) if diffs else None
    return {
        "case": case.name,
        "compared": len(diffs),
        "max_abs_diff": max(diffs.values()) if diffs else float("nan"),
        "worst": worst,
        "logits_diff": float((tl_logits - wb_logits).abs().max()),
        "shape_mismatch": shape_mismatch,
        "tl_only": sorted({_pattern(n) for n in tl_names - wb_names}),
        "wb_only": sorted({_pattern(n) for n in wb_names - tl_names}),
        "raw": raw,
        "diffs": diffs,
    }


def main() -> None:
    print(f"TransformerLens {version('transformer-lens')}, transformers {version('transformers')}, "
          f"torch {torch.__version__}; batch {BATCH} x {LENGTH} tokens, fp32, CPU\n")
    print("| family | hooks compared | max abs diff | worst hook | logits max abs diff | shape mismatches |")
    print("|---|---|---|---|---|---|")
    results = []
    for case in FAMILY_CASES.values():
        try:
            result = compare(case)
        except Exception as error:  # a family the bridge cannot boot: say so, keep going
            print(f"| {case.name} | - | - | - | - | bridge failed: {type(error).__name__}: {str(error)[:120]} |")
            continue
        results.append(result)
        print(f"| {result['case']} | {result['compared']} | {result['max_abs_diff']:.2e} | "
              f"`{result['worst']}` | {result['logits_diff']:.2e} | {len(result['shape_mismatch'])} |")
    total = sum(r["compared"] for r in results)
    overall = max((r["max_abs_diff"] for r in results), default=float("nan"))
    print(f"\n{total} comparisons over {len(results)} families; largest difference {overall:.2e}.\n")
    for result in results:
        # The bridge wraps every submodule with hook_in / hook_out; count those, name the rest.
        wrappers = [n for n in result["tl_only"] if n.endswith((".hook_in", ".hook_out"))]
        named = [n for n in result["tl_only"] if n not in wrappers]
        print(f"- **{result['case']}**: only TransformerLens: {', '.join(named) or '-'} "
              f"(+ {len(wrappers)} wrapper hook_in/hook_out names); "
              f"only workbench: {', '.join(result['wb_only']) or '-'}"
              + (f"; shapes differ: {'; '.join(result['shape_mismatch'])}" if result["shape_mismatch"] else "")
              + (f"; unshifted ALiBi scores differ by up to {max(result['raw'].values()):.2f}" if result["raw"] else ""))


if __name__ == "__main__":
    main()
