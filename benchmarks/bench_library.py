"""What the TransformerLens-style library costs on SmolLM2 at long inputs.

Run by hand, not by pytest or CI. SmolLM2-135M (fp32, batch 1, CPU; natural text: the first T
tokens of probes/corpus), each job in a fresh process under an address-space cap (``--cap-gib``),
peak RSS reset once the model is loaded:

* ``hidden``: ``model.hidden(tokens)``, nothing watched (the floor);
* ``lens``: ``model.logit_lens(tokens, positions=<32 evenly spaced>, top_k=5)``, every layer;
* ``cache-resid``: ``run_with_cache`` of every ``hook_resid_post`` (and the logits);
* ``cache-patterns``: ``run_with_cache`` of every ``hook_pattern``, which must be refused
  before running, with the number.

    .venv/bin/python benchmarks/bench_library.py [--tokens 8192] [--cap-gib 12]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from measure import cap_address_space, gib, measured, run_child

REPO = Path(__file__).resolve().parents[1]
LABELS = {
    "hidden": "`model.hidden(tokens)`, nothing watched",
    "lens": "`model.logit_lens(tokens, positions=32 evenly spaced, top_k=5)`, 30 layers",
    "cache-resid": "`run_with_cache`, every `hook_resid_post` (+ logits)",
    "cache-patterns": "`run_with_cache`, every `hook_pattern`",
}


def child(kind: str, length: int) -> dict[str, Any]:
    import torch

    import workbench
    from workbench.model.running import CacheTooLargeError

    model = workbench.load_model("smollm2")
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(REPO.glob("probes/corpus/*.txt")))
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    tokens = torch.tensor([(ids * (length // len(ids) + 1))[:length]])
    result: dict[str, Any] = {"kind": kind, "tokens": length}

    def run() -> None:
        with torch.no_grad():
            if kind == "hidden":
                model.hidden(tokens)
            elif kind == "lens":
                positions = torch.linspace(0, length - 1, 32).round().long().tolist()
                lens = model.logit_lens(tokens, positions=positions, top_k=5)
                result["held_bytes"] = lens.token_ids.numel() * 8 + lens.probs.numel() * 4
            elif kind == "cache-resid":
                _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
                result["held_bytes"] = sum(t.numel() * t.element_size() for t in cache.values())
            else:
                try:
                    model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
                except CacheTooLargeError as error:
                    result["refused"] = str(error)

    measured(result, run)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--cap-gib", type=float, default=12.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        os.environ["HF_HUB_OFFLINE"] = "1"
        cap_address_space(args.cap_gib)
        print(json.dumps(child(args.child, args.tokens)), flush=True)
        return
    print("| job | tokens | peak RSS during the call | held | outcome |\n|---|---|---|---|---|")
    for kind in LABELS:
        r = run_child(__file__, kind, args.tokens, args.cap_gib)
        held = gib(r["held_bytes"]) if "held_bytes" in r else "-"
        outcome = f"ok ({r['seconds']:.1f} s)" if r.get("ok") else f"failed: {r.get('error')}"
        if "refused" in r:
            outcome = f"refused in {r['seconds']:.2f} s: \"{r['refused'].split(' but ')[0]}\""
        peak = gib(r["peak_bytes"]) if "peak_bytes" in r else "-"
        print(f"| {LABELS[kind]} | {r['tokens']} | {peak} | {held} | {outcome} |", flush=True)


if __name__ == "__main__":
    main()
