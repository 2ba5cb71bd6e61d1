"""Where SmolLM2-135M stops coping past its claimed 8,192 tokens: transformers vs the workbench.

Run by hand (minutes on a CPU; tests/measurements/test_length_smollm2_long.py runs the same
with WORKBENCH_LONG=1):

    .venv/bin/python benchmarks/length_smollm2.py [--tokens 16384] [--json out.json]

1. Ground truth: transformers' own SmolLM2 (the embedded GGUF, fp32) computes the next-token
   loss at every position of the workbench's natural probe (16k tokens of the shipped corpus,
   the long profile's first seed). Its windows of 1/8 of the claim give where the loss leaves
   its level within the claim for good: the first window after the best one in the claim from
   which every window is more than 0.5 nats above that best.
2. The workbench: `workbench extrapolation --profile long` through the pipeline (the same
   run as the CLI), which reports an effective context per probe kind and a status.
3. The check: the workbench's natural effective context is within one window of (1).

Prints the window levels of both and the verdict, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

CLAIM = 8192
WINDOW = CLAIM // 8  # the long profile's window_fraction x the claim
MARGIN_NATS = 0.5


def transformers_losses(tokens: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Next-token loss ``[T-1]`` of transformers' SmolLM2 on ``tokens [1, T]``, unembedded in chunks."""
    import transformers

    from workbench.loading.sources import smollm2_path

    path = smollm2_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    with torch.no_grad():
        hidden = model.model(input_ids=tokens).last_hidden_state  # [1, T, d_model]
        losses = []
        for start in range(0, tokens.shape[1] - 1, chunk):
            stop = min(start + chunk, tokens.shape[1] - 1)
            logits = model.lm_head(hidden[0, start:stop]).float()  # [c, V]
            losses.append(torch.nn.functional.cross_entropy(logits, tokens[0, start + 1 : stop + 1], reduction="none"))
    return torch.cat(losses)


def window_levels(loss: torch.Tensor, window: int) -> list[float]:
    """Mean loss per window of target positions (loss index i is the target at i + 1)."""
    length = loss.shape[0] + 1
    return [float(loss[max(0, s - 1) : s + window - 1].mean()) for s in range(0, length, window)]


def stops_coping(levels: list[float], window: int, claim: int) -> int | None:
    """The start of the first window after the best one inside the claim from which every window
    is more than MARGIN_NATS above it (None: it never leaves)."""
    inside = [i for i in range(len(levels)) if (i + 1) * window <= claim]
    best = min(inside, key=lambda i: levels[i])
    for i in range(best + 1, len(levels)):
        if all(level > levels[best] + MARGIN_NATS for level in levels[i:]):
            return i * window
    return None


def compare(tokens_n: int = 2 * CLAIM, progress=print) -> dict[str, Any]:
    """Run both sides and return the numbers (see the module docstring)."""
    from workbench.inputs import natural_text_tokens
    from workbench.loading.tokenizer import load_tokenizer
    from workbench.pipeline.run import RunOptions, run

    tokens = natural_text_tokens(load_tokenizer("smollm2"), tokens_n, batch=1, seed=0)  # the long profile's seed 0
    start = time.perf_counter()
    reference = transformers_losses(tokens)
    seconds_transformers = time.perf_counter() - start
    levels = window_levels(reference, WINDOW)
    measured = stops_coping(levels, WINDOW, CLAIM)
    progress(f"transformers: {seconds_transformers:.0f} s; windows {[round(v, 2) for v in levels]}; "
             f"stops coping at {measured}")
    start = time.perf_counter()
    report = run("smollm2", RunOptions(command="extrapolation", profile="long", tokens=tokens_n),
                 progress=lambda message: progress(f"  workbench: {message}")).report
    seconds_workbench = time.perf_counter() - start
    length = [f for f in report["findings"] if f["analyzer"] == "length_extrapolation"]
    effective = report["length"]["effective_context"]
    progress(f"workbench: {seconds_workbench:.0f} s; effective context {effective}; status "
             f"{report['summary']['analyzers'].get('length_extrapolation')}")
    return {
        "tokens": tokens_n, "claim": CLAIM, "window": WINDOW,
        "transformers_window_levels": [round(v, 4) for v in levels],
        "transformers_stops_coping": measured, "seconds_transformers": round(seconds_transformers, 1),
        "workbench_effective_context": effective,
        "workbench_status": report["summary"]["analyzers"].get("length_extrapolation"),
        "workbench_findings": [{k: f.get(k) for k in ("check", "status", "message", "details")} for f in length],
        "seconds_workbench": round(seconds_workbench, 1),
        "within_one_window": (measured is not None and effective.get("natural") is not None
                              and abs(effective["natural"] - measured) <= WINDOW)
                             or (measured is None and effective.get("natural") is None),
        "nan_positions": int(math.fsum(float(x) for x in torch.isnan(reference))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2 * CLAIM)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()
    result = compare(args.tokens)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
