"""Forward-pass speed: the workbench decoder (nothing recording) vs transformers' SDPA forward.

Run by hand, not by pytest:

    .venv/bin/python benchmarks/bench_forward.py [--lengths 512 2048] [--repeats 5]

Both models hold the same SmolLM2-135M weights (dequantised from the embedded GGUF) in fp32 on
the CPU. Timing discipline (gpt-fast): warm-up runs discarded, the two models interleaved so that
machine noise hits both, the minimum of N runs kept. Only the ratio is the result; absolute times
are context. Target: ratio <= 1.10. Appends a section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import torch


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    args = parser.parse_args()

    import transformers

    import workbench
    from workbench.loading.sources import smollm2_path

    path = smollm2_path()
    ours = workbench.load_model("smollm2")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    rows = []
    with torch.inference_mode():
        for length in args.lengths:
            tokens = torch.randint(17, ours.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
            for _ in range(2):  # warm-up, discarded
                ours(tokens)
                theirs(tokens)
            ours_s, theirs_s = [], []
            for _ in range(args.repeats):  # interleaved
                ours_s.append(timed(lambda t=tokens: ours(t)))
                theirs_s.append(timed(lambda t=tokens: theirs(t).logits))
            diff = float((ours(tokens) - theirs(tokens).logits).abs().max())
            rows.append((length, min(ours_s), min(theirs_s), min(ours_s) / min(theirs_s), diff))
    lines = [
        f"## Forward: workbench decoder vs transformers SDPA ({datetime.date.today().isoformat()})",
        "",
        f"SmolLM2-135M fp32, batch 1, CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, transformers {transformers.__version__}; min of {args.repeats} interleaved runs.",
        "",
        "| tokens | workbench s | transformers s | ratio (target <= 1.10) | max abs logit diff |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {a:.3f} | {b:.3f} | **{r:.3f}** | {d:.2e} |" for n, a, b, r, d in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        results = Path(__file__).with_name("RESULTS.md")
        previous = results.read_text() if results.exists() else "# Benchmark results\n\nRatios measured in one run on the named machine.\n"
        results.write_text(previous.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()
