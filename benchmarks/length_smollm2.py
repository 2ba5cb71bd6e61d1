"""Where SmolLM2-135M stops coping past its claimed 8,192 tokens: transformers vs the workbench.

Run by hand (minutes on a CPU; tests/measurements/test_length_smollm2_long.py runs the same
with WORKBENCH_LONG=1):

    .venv/bin/python benchmarks/length_smollm2.py [--tokens 16384] [--json out.json]

1. Ground truth: transformers' own SmolLM2 (the embedded GGUF, fp32) computes the next-token
   loss at every position of the workbench's natural probe (16k tokens of the shipped corpus,
   the long profile's first seed), in windows of 1/8 of the claim. A window's level mixes two
   things: how hard its passage is, and what its position does to the model. To measure the
   second alone, each window from half the claim on is scored again with only the half-claim
   of text before it (BOS first, every position inside the claim): its *position cost* is the
   full-context loss minus that short-context loss on the same targets. The model stops coping
   at the first window from which every window's position cost exceeds MARGIN_NATS.
2. The workbench: `workbench extrapolation --profile long` through the pipeline (the same
   run as the CLI), which reports an effective context per probe kind and a status.
3. The check: the workbench's natural effective context is within one window of (1).

Prints the window levels, the position costs and the verdicts, and writes them as JSON.
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


def load_transformers_smollm2():
    """transformers' own SmolLM2 from the embedded GGUF, fp32."""
    import transformers

    from workbench.loading.sources import smollm2_path

    path = smollm2_path()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()


def transformers_losses(tokens: torch.Tensor, model: Any = None, chunk: int = 512) -> torch.Tensor:
    """Next-token loss ``[T-1]`` of transformers' SmolLM2 on ``tokens [1, T]``, unembedded in chunks."""
    model = load_transformers_smollm2() if model is None else model
    with torch.no_grad():
        hidden = model.model(input_ids=tokens).last_hidden_state  # [1, T, d_model]
        losses = []
        for start in range(0, tokens.shape[1] - 1, chunk):
            stop = min(start + chunk, tokens.shape[1] - 1)
            logits = model.lm_head(hidden[0, start:stop]).float()  # [c, V]
            losses.append(torch.nn.functional.cross_entropy(logits, tokens[0, start + 1 : stop + 1], reduction="none"))
    return torch.cat(losses)


def position_costs(tokens: torch.Tensor, full: torch.Tensor, model: Any, window: int,
                   context: int) -> dict[int, float]:
    """Per window start ``w >= context``: the mean loss of targets ``w+1 .. w+window-1`` with the
    whole text before them (``full``, from :func:`transformers_losses`) minus the same targets'
    loss when the model sees only BOS and the ``context - 1`` tokens before ``w`` (every position
    then inside ``context + window``)."""
    bos = tokens[:, :1]  # the probe starts with the tokenizer's BOS
    costs = {}
    for start in range(context, tokens.shape[1] - window + 1, window):
        short_input = torch.cat([bos, tokens[:, start - context + 1 : start + window]], dim=1)
        short = transformers_losses(short_input, model)[-(window - 1):]
        costs[start] = float((full[start : start + window - 1] - short).mean())
    return costs


def window_levels(loss: torch.Tensor, window: int) -> list[float]:
    """Mean loss per window of target positions (loss index i is the target at i + 1)."""
    length = loss.shape[0] + 1
    return [float(loss[max(0, s - 1) : s + window - 1].mean()) for s in range(0, length, window)]


def stops_coping(costs: dict[int, float]) -> int | None:
    """The first window start from which every window's position cost exceeds MARGIN_NATS
    (None: it never stops coping)."""
    starts = sorted(costs)
    for i, start in enumerate(starts):
        if all(costs[later] > MARGIN_NATS for later in starts[i:]):
            return start
    return None


def best_window_rule(levels: list[float], window: int, claim: int) -> int | None:
    """The rule before position costs (kept to show why it was replaced): the first window after
    the best one inside the claim from which every window is more than MARGIN_NATS above it. A hard
    passage past the claim reads as the model giving up."""
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
    model = load_transformers_smollm2()
    reference = transformers_losses(tokens, model)
    costs = position_costs(tokens, reference, model, WINDOW, CLAIM // 2)
    del model
    seconds_transformers = time.perf_counter() - start
    levels = window_levels(reference, WINDOW)
    measured = stops_coping(costs)
    progress(f"transformers: {seconds_transformers:.0f} s; windows {[round(v, 2) for v in levels]}; "
             f"position costs {[round(costs[k], 2) for k in sorted(costs)]}; stops coping at {measured}")
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
        "transformers_position_costs": {start: round(cost, 4) for start, cost in sorted(costs.items())},
        "transformers_stops_coping": measured,
        "best_window_rule": best_window_rule(levels, WINDOW, CLAIM),
        "seconds_transformers": round(seconds_transformers, 1),
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
