"""KV planning on the seeds' models: the workbench (vLLM and ideal engines) beside first
principles, the published vLLM start-up figures and two PyPI calculators (llm-analysis,
llm-mem-planner, run in their own venv by bench_kv_tools.py).

    .venv/bin/python benchmarks/bench_kv.py [--tools-python /work/scratch/kv/tools/bin/python]

Prints a markdown table (the KV section of benchmarks/RESULTS.md). Every deployment is 8,192
tokens, batch 1; bytes are per GPU. First principles are computed here from the architecture
profile with their own arithmetic, not with the workbench's planner.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from workbench.memory.params import count_params
from workbench.memory.planner import plan
from workbench.settings import get_architecture_profile, get_device

GIB = 2**30
CONTEXT, BATCH = 8192, 1
# (model, device, tp, weights bits): the smallest usual deployment on H100s; DeepSeek-V3's FP8
# weights need 8 x H200 (8 x H100 leaves them no room).
DEPLOYMENTS = [
    ("llama-3.1-8b", "h100-sxm", 1, 16), ("mistral-7b", "h100-sxm", 1, 16),
    ("gemma-2-9b", "h100-sxm", 1, 16), ("gemma-2-27b", "h100-sxm", 1, 16),
    ("llama-3.1-70b", "h100-sxm", 4, 16), ("qwen-2.5-72b", "h100-sxm", 4, 16),
    ("llama-3.1-405b", "h100-sxm", 8, 8), ("deepseek-v3", "h200", 8, 8),
]  # fmt: skip
# vLLM's start-up log for Llama-3.1-8B on one H100 at its defaults (issue #11): GiB.
PUBLISHED = {"llama-3.1-8b": {"weights": 14.99, "kv_budget": 51.38, "concurrency": 51.38}}
HF_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "gemma2": "Gemma2ForCausalLM",
            "qwen2": "Qwen2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}  # fmt: skip


def first_principles(config, tp: int, weights_bits: int) -> dict[str, float]:
    """KV bytes at CONTEXT tokens and weights per GPU, from the shape alone."""
    if config.mla_kv_rank is not None:
        per_layer = (config.mla_kv_rank + config.mla_rope_dim) * 2
    else:
        per_layer = 2 * -(-config.kv_heads // tp) * config.d_head * 2
    windowed = 0 if config.sliding_window is None else len(config.sliding_layers or range(config.n_layers))
    tokens = (config.n_layers - windowed) * CONTEXT + windowed * min(CONTEXT, config.sliding_window or CONTEXT)
    n_params = config.n_params or count_params(config)  # Qwen2.5-72B's profile counts from the shape
    weights = n_params * 2
    if weights_bits == 8:  # linear layers in fp8; embeddings, LM head and norms stay bf16
        kept = config.vocab_size * config.d_model * (1 if config.tie_embeddings else 2)
        weights = n_params + kept
    return {"kv": BATCH * per_layer * tokens, "weights": weights / tp}


def hf_config(config, extras: dict) -> dict:
    """A Hugging Face config.json for the calculators that read one."""
    data = {
        "model_type": config.model_type, "architectures": [HF_TYPES[config.model_type]],
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.kv_heads, "head_dim": config.d_head,
        "intermediate_size": extras.get("d_dense_mlp", config.d_mlp),
        "max_position_embeddings": config.max_positions, "tie_word_embeddings": config.tie_embeddings,
        "torch_dtype": "bfloat16", "sliding_window": config.sliding_window,
    }  # fmt: skip
    if config.mla_kv_rank is not None:
        data.update(q_lora_rank=extras["q_lora_rank"], kv_lora_rank=config.mla_kv_rank,
                    qk_nope_head_dim=config.d_head, qk_rope_head_dim=config.mla_rope_dim, v_head_dim=config.d_head,
                    moe_intermediate_size=config.d_mlp, n_routed_experts=config.n_experts,
                    num_experts_per_tok=config.top_k, n_shared_experts=extras["n_shared_experts"],
                    first_k_dense_replace=extras["first_k_dense_replace"])
    return data


def llm_analysis_config(config) -> dict:
    """llm-analysis's own schema (it has no MLA and no sliding windows)."""
    return {"name": config.name, "num_layers": config.n_layers, "n_head": config.n_heads,
            "hidden_dim": config.d_model, "vocab_size": config.vocab_size, "max_seq_len": config.max_positions,
            "num_key_value_heads": config.kv_heads, "ffn_embed_dim": config.d_mlp,
            "expansion_ratio": config.d_mlp / config.d_model, "model_type": config.model_type,
            "moe_num_experts": max(1, config.n_experts), "moe_top_k": max(1, config.top_k)}  # fmt: skip


def run_tools(python: str, jobs: list[dict]) -> list[dict]:
    script = Path(__file__).with_name("bench_kv_tools.py")
    done = subprocess.run([python, str(script)], input=json.dumps(jobs), capture_output=True, text=True,
                          timeout=1800, check=True)  # fmt: skip
    return json.loads(done.stdout)


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:,.2f}"


def refused(result: dict) -> str:
    message = result["error"].removeprefix("error: ").removeprefix("Error: ")
    return f"refused: {message[:48]}..." if len(message) > 48 else f"refused: {message}"


def off(value: float | None, truth: float) -> str:
    return "" if value is None else f" ({(value - truth) / truth:+.0%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools-python", default="/work/scratch/kv/tools/bin/python")
    args = parser.parse_args()
    rows, jobs = [], []
    for name, device, tp, bits in DEPLOYMENTS:
        profile = get_architecture_profile(name)
        config = profile.config
        weights_dtype = "fp8" if bits == 8 else "bf16"
        options = {"batch": BATCH, "context": CONTEXT, "tp": tp, "weights_dtype": weights_dtype}
        vllm = plan(config, get_device(device), **options)
        ideal = plan(config, get_device(device), engine="ideal", **options)
        rows.append((name, device, tp, weights_dtype, config, first_principles(config, tp, bits), vllm, ideal))
        jobs.append({"name": name, "context": CONTEXT, "batch": BATCH, "tp": tp, "weights_bits": bits,
                     "hf_config": hf_config(config, profile.extras),
                     "llm_analysis_config": llm_analysis_config(config)})  # fmt: skip
    tools = run_tools(args.tools_python, jobs)
    print(f"All at {CONTEXT:,} tokens, batch {BATCH}; GiB per GPU; (+x%) is the error against first principles.\n")
    print("| model | GPUs | weights: first principles | workbench | llm-analysis | llm-mem-planner "
          "| KV at 8k: first principles | workbench ideal | workbench vLLM (blocks) | llm-analysis | llm-mem-planner "
          "| vLLM KV budget: workbench | published | concurrency at 8k: workbench | published |")
    print("|" + "---|" * 15)
    for (name, device, tp, dtype, _config, truth, vllm, ideal), tool in zip(rows, tools, strict=True):
        analysis, planner = tool["llm-analysis"], tool["llm-mem-planner"]
        published = PUBLISHED.get(name, {})
        cells = [
            name, f"{tp} x {device} ({dtype})", gib(truth["weights"]),
            gib(vllm.weights_bytes) + off(vllm.weights_bytes, truth["weights"]),
            gib(analysis.get("weights_bytes")) + off(analysis.get("weights_bytes"), truth["weights"])
            if "error" not in analysis else refused(analysis),
            gib(planner.get("weights_bytes")) + off(planner.get("weights_bytes"), truth["weights"])
            if "error" not in planner else refused(planner),
            gib(truth["kv"]), gib(ideal.kv_bytes) + off(ideal.kv_bytes, truth["kv"]),
            gib(vllm.kv_bytes) + off(vllm.kv_bytes, truth["kv"]),
            gib(analysis.get("kv_bytes")) + off(analysis.get("kv_bytes"), truth["kv"]) if "error" not in analysis else "-",
            gib(planner.get("kv_bytes")) + off(planner.get("kv_bytes"), truth["kv"]) if "error" not in planner else "-",
            gib(vllm.kv_budget_bytes), f"{published['kv_budget']:.2f}" if published else "-",
            f"{vllm.max_concurrency:.2f}x", f"{published['concurrency']:.2f}x" if published else "-",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
