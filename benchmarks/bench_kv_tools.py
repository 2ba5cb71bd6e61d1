"""Run the PyPI KV/memory calculators on one job (for benchmarks/bench_kv.py).

Runs inside their own venv (llm-analysis 0.2.2 and llm-mem-planner 0.2.2, which must not share
the workbench's environment), never imports the workbench. Reads a JSON list of jobs on stdin,
prints a JSON list of results: weights and KV bytes per GPU as each tool reports them, or the
tool's error message.

    python -m venv /work/scratch/kv/tools
    /work/scratch/kv/tools/bin/pip install llm-analysis==0.2.2 llm-mem-planner==0.2.2
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

GIB = 2**30


def llm_analysis(job: dict) -> dict:
    """llm-analysis's inference(): its own model-config schema, w16 or w8 weights, 16-bit KV."""
    from llm_analysis.analysis import infer

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{job['name']}.json"
        path.write_text(json.dumps(job["llm_analysis_config"]))
        dtype = "w8a16e16" if job["weights_bits"] == 8 else "w16a16e16"
        try:
            result = infer(model_name=str(path), gpu_name="h100-sxm-80gb", dtype_name=dtype,
                           batch_size_per_gpu=job["batch"], seq_len=job["context"], num_tokens_to_generate=1,
                           tp_size=job["tp"], log_level="ERROR")
        except Exception as error:  # report whatever the tool raises, one line
            return {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
    return {"weights_bytes": result["weight_memory_per_gpu"], "kv_bytes": result["kv_cache_memory_per_gpu"],
            "activation_bytes": result["prefill_activation_memory_per_gpu"]}


def llm_mem_planner(job: dict) -> dict:
    """llm-mem-planner's CLI on a Hugging Face config.json; its text report parsed."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(job["hf_config"]))
        command = [str(Path(sys.executable).parent / "llm-mem"), "--config", str(path), "--seq-len",
                   str(job["context"]), "--batch", str(job["batch"]), "--tp", str(job["tp"]),
                   "--weight-dtype", "fp8" if job["weights_bits"] == 8 else "bf16", "--kv-dtype", "bf16"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    text = done.stdout + done.stderr
    weights = re.search(r"weights_per_rank: ([\d.]+) GiB", text)
    kv = re.search(r"kv_per_rank=([\d.]+) GiB", text)
    if done.returncode or not weights or not kv:
        return {"error": " ".join(text.strip().splitlines()[-1:])[:200]}
    return {"weights_bytes": float(weights[1]) * GIB, "kv_bytes": float(kv[1]) * GIB}


def main() -> None:
    jobs = json.loads(sys.stdin.read())
    results = [{"llm-analysis": llm_analysis(job), "llm-mem-planner": llm_mem_planner(job)} for job in jobs]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
