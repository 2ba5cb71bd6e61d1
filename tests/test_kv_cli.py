"""`workbench kv` and `workbench devices` through typer's CliRunner: the engine said in the table
and the JSON, strict JSON, and the table of bad inputs (each one line on stderr, exit 2, no
JSON file left behind)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import cli
from workbench.settings import get_device, list_devices

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, list(args))


@pytest.fixture(scope="module")
def twelve_kv_heads(tmp_path_factory) -> Path:
    """A config.json whose 12 KV heads cannot shard over 8 devices."""
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps({
        "model_type": "llama", "vocab_size": 1000, "hidden_size": 768, "num_hidden_layers": 2,
        "num_attention_heads": 48, "num_key_value_heads": 12, "head_dim": 16, "intermediate_size": 1024,
        "max_position_embeddings": 4096, "torch_dtype": "bfloat16", "rms_norm_eps": 1e-5,
    }))  # fmt: skip
    return path


BAD_INPUTS = [
    ("empty device", ["--device", ""], "--device is empty"),
    ("empty kv dtype", ["--kv-dtype", ""], "--kv-dtype is empty"),
    ("empty weights dtype", ["--weights-dtype", ""], "--weights-dtype is empty"),
    ("empty engine", ["--engine", " "], "--engine is empty"),
    ("unknown engine", ["--engine", "tgi"], "unknown engine 'tgi'"),
    ("unknown kv dtype", ["--kv-dtype", "fp4"], "unknown KV-cache dtype 'fp4'"),
    ("unknown weights dtype", ["--weights-dtype", "q4k"], "did you mean 'q4_k'?"),
    ("int8 cache on vllm", ["--kv-dtype", "int8"], "the vllm engine has no int8 KV cache"),
    ("int4 cache on vllm", ["--kv-dtype", "int4"], "the vllm engine has no int4 KV cache"),
    ("context past the limit", ["--context", "200000"], "past the model's limit of 131,072 positions"),
    ("utilization above 1", ["--utilization", "1.5"], "utilization must be in (0, 1]"),
    ("tp not dividing heads", ["--tp", "3"], "divide n_heads (32)"),
    ("unknown device", ["--device", "h100x"], "did you mean 'h100"),
]


@pytest.mark.parametrize(("case", "argv", "expected"), BAD_INPUTS, ids=[case for case, _, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_no_json(case, argv, expected, tmp_path):
    target = tmp_path / "kv.json"
    result = invoke("kv", "llama-3.1-8b", *argv, "--json", str(target))
    assert result.exit_code == 2, (case, result.exit_code, result.output)
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("error: "), message
    assert expected in message, message
    assert not target.exists() and result.stdout == ""


def test_twelve_kv_heads_at_tp_8_are_refused_for_vllm_only(twelve_kv_heads):
    refused = invoke("kv", str(twelve_kv_heads), "--tp", "8")
    assert refused.exit_code == 2 and "cannot shard 12 KV heads over --tp 8" in refused.stderr
    assert "\n" not in refused.stderr.strip()
    assert invoke("kv", str(twelve_kv_heads), "--tp", "8", "--engine", "ideal").exit_code == 0


def test_ideal_engine_allows_an_int8_cache():
    result = invoke("kv", "llama-3.1-8b", "--context", "8192", "--kv-dtype", "int8", "--engine", "ideal")
    assert result.exit_code == 0, result.output
    assert "first principles" in result.stdout


def test_auto_kv_dtype_is_accepted(tmp_path):
    result = invoke("kv", "llama-3.1-8b", "--context", "8192", "--kv-dtype", "auto", "--json", str(tmp_path / "a.json"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a.json").read_text())["kv_dtype"] == "bf16"


def test_the_engine_is_said_in_the_table_and_the_json(tmp_path):
    result = invoke("kv", "llama-3.1-8b", "--context", "8192", "--json", str(tmp_path / "kv.json"))
    assert result.exit_code == 0, result.output
    assert "vLLM at its defaults" in result.stdout and "51.38x" in result.stdout
    plan = json.loads((tmp_path / "kv.json").read_text())
    assert plan["engine"] == "vllm" and plan["engine_title"] == "vLLM at its defaults"
    assert plan["max_batch"] == 51 and plan["block_size"] == 16


@pytest.mark.parametrize(
    "argv",
    [["llama-3.1-405b", "--device", "t4"],  # nothing fits: zero concurrency, no context
     ["mistral-7b", "--context", "65536", "--allow-long-context", "--engine", "ideal"],  # unbounded
     ["smollm2-135m", "--device", "cpu"]],
)  # fmt: skip
def test_json_is_strict_json_even_at_the_edges(argv, tmp_path):
    target = tmp_path / "kv.json"
    result = invoke("kv", *argv, "--json", str(target))
    assert result.exit_code in (0, 1), result.output
    text = target.read_text()
    assert not re.search(r"\b(Infinity|NaN)\b", text)
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))


def test_allow_long_context_plans_past_the_limit_with_a_warning():
    result = invoke("kv", "llama-3.1-8b", "--context", "200000", "--allow-long-context")
    assert result.exit_code == 0, result.output
    assert "exceeds the model's max_positions 131,072" in result.stdout


def test_kv_help_says_device_is_a_catalog_name():
    result = invoke("kv", "--help")
    text = " ".join(re.sub(r"[\u2500-\u257f]", " ", result.stdout).split())  # without rich's box lines
    assert "catalog name" in text and "not a torch device" in text and "workbench devices" in text


def test_devices_shows_every_peak_and_whole_sources(monkeypatch):
    monkeypatch.setattr(cli, "out", Console(width=1000, force_terminal=False))
    result = invoke("devices")
    assert result.exit_code == 0, result.output
    names = list_devices()
    assert len(names) == 13
    with_peak = [n for n in names if get_device(n).peak_16bit_flops_per_second]
    assert len(with_peak) == 12  # all but this host's CPU
    assert result.stdout.count("TFLOP/s") == len(with_peak)
    assert "989 TFLOP/s" in result.stdout  # h100-sxm, 989.4e12
    a10g = get_device("a10g")
    assert " ".join(a10g.source.split()) in " ".join(result.stdout.split())  # not cut mid-sentence
    assert "79.18 GiB" in result.stdout  # what CUDA reports for the H100
