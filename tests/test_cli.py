"""The `workbench` command through typer's CliRunner: every command, exit codes, and the table
of bad inputs (each: one line on stderr naming the file and the problem, exit code 2, no report
left behind)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cli
from workbench.config import DecoderConfig
from workbench.loading.native import save_checkpoint
from workbench.model.decoder import HookedDecoder

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny MoE workbench checkpoint (random weights)."""
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8, d_mlp=48,
                           max_positions=64, n_experts=4, top_k=2, name="tiny-moe")
    return save_checkpoint(HookedDecoder(config), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def hf_tiny(tmp_path_factory) -> Path:
    """A tiny transformers llama folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("hf") / "llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def invoke(*args: str):
    return runner.invoke(cli.app, list(args))


def reports_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("command", ["diagnose", "attention", "residual", "routing", "extrapolation", "profile"])
def test_analysis_commands_write_a_report_and_exit_0(tiny, tmp_path, command):
    out = tmp_path / "report"
    result = invoke(command, str(tiny), "--profile", "ci", "--out", str(out), "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.html'}" in result.stdout.replace("\n", "")
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["command"] == command and report["summary"]["status"] != "fail"
    assert json.loads((tmp_path / "r.json").read_text()) == report
    expected = {"diagnose": "attention", "attention": "attention", "residual": "residual",
                "routing": "routing", "extrapolation": "length", "profile": "timing"}[command]
    assert report[expected] is not None


def test_quiet_prints_status_and_path_only(tiny, tmp_path):
    result = invoke("attention", str(tiny), "--profile", "ci", "--out", str(tmp_path / "r"), "--quiet")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"pass {tmp_path / 'r'}"


def test_prompt_is_probed_and_kept_as_text(tiny, tmp_path):
    prompt = "<b>hello</b> & goodbye"
    result = invoke("attention", str(tiny), "--profile", "ci", "--prompt", prompt, "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["probes"][0]["kind"] == "user" and report["probes"][0]["text"] == prompt


def test_transformers_folder_is_diagnosed(hf_tiny, tmp_path):
    result = invoke("attention", str(hf_tiny), "--profile", "ci", "--out", str(tmp_path / "r"), "--quiet")
    assert result.exit_code == 0, result.output


def test_kv_llama_8b_json(tmp_path):
    result = invoke("kv", "llama-3.1-8b", "--device", "h100-sxm", "--context", "131072", "--batch", "1",
                    "--kv-dtype", "bf16", "--json", str(tmp_path / "kv.json"))
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "kv.json").read_text())
    assert plan["kv_bytes_per_token"] == 131_072 and plan["kv_bytes"] == 16 * 2**30
    for key in ("weights_bytes", "device_bytes", "fits", "max_context", "max_batch", "risk"):
        assert key in plan
    assert "16.00 GiB" in result.stdout


def test_kv_that_does_not_fit_exits_1():
    result = invoke("kv", "llama-3.1-70b", "--device", "t4", "--context", "131072", "--batch", "8")
    assert result.exit_code == 1
    assert "does not fit" in result.stdout or "no" in result.stdout


def test_kv_reads_a_checkpoint_config(hf_tiny):
    result = invoke("kv", str(hf_tiny / "config.json"), "--device", "l4", "--context", "64", "--quiet")
    assert result.exit_code == 0 and result.stdout.startswith("fits")


def test_check_runs_the_probes_suite_with_junit(tiny, tmp_path):
    junit = tmp_path / "junit.xml"
    result = invoke("check", str(tiny), "--profile", "ci", "--junitxml", str(junit))
    assert result.exit_code == 0, result.output
    assert "<testsuite" in junit.read_text()


def test_devices_profiles_and_zoo_list():
    devices = invoke("devices")
    assert devices.exit_code == 0 and "h100-sxm" in devices.stdout and "mi300x" in devices.stdout
    profiles = invoke("profiles")
    assert profiles.exit_code == 0 and "default" in profiles.stdout and "llama-3.1-8b" in profiles.stdout
    zoo = invoke("zoo", "list")
    assert zoo.exit_code == 0 and "unscaled-attention" in zoo.stdout
    rows = {line.split()[0]: line.split()[1:] for line in zoo.stdout.splitlines() if line.strip()}
    assert rows["sink-unscaled"][0] == "fail" and rows["sink-text"][:2] == ["no", "fail"]
    assert "Attention logits q.k" not in zoo.stdout  # the descriptions only with --details
    assert "Attention logits q.k" in invoke("zoo", "list", "--details").stdout


def test_help_does_not_import_torch():
    code = ("import sys; sys.argv = ['workbench', '--help']; import cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip().endswith("NO-TORCH"), result.stdout[-500:]
    assert "diagnose" in result.stdout


# --- bad input: one line, exit 2, nothing written ------------------------------------------------


def _config(tiny: Path) -> dict:
    return json.loads((tiny / "workbench.json").read_text())


class Payload:
    """Unpickling this would create ``marker`` (it must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def bad_inputs(tmp: Path, tiny: Path, hf_tiny: Path) -> list[tuple[str, list[str], str]]:
    """(case id, argv, the exact stderr line)."""
    cases = []
    missing = tmp / "missing"
    cases.append(("missing path", ["diagnose", str(missing)], f"error: {missing}: no such file or folder"))
    empty_dir = tmp / "empty"
    empty_dir.mkdir()
    cases.append(("no config.json", ["diagnose", str(empty_dir)],
                  f"error: {empty_dir}: not a checkpoint: no config.json (transformers) or workbench.json "
                  "(workbench) in it"))
    not_json = tmp / "notjson"
    not_json.mkdir()
    (not_json / "config.json").write_text("{model_type: llama")
    cases.append(("config not JSON", ["diagnose", str(not_json)],
                  f"error: {not_json / 'config.json'}: not valid JSON (line 1: Expecting property name "
                  "enclosed in double quotes)"))
    lacking = tmp / "lacking"
    lacking.mkdir()
    (lacking / "config.json").write_text(json.dumps({"vocab_size": 10}))  # other keys have transformers' defaults
    cases.append(("config lacks fields", ["diagnose", str(lacking)],
                  f"error: {lacking / 'config.json'}: config.json lacks 'model_type'"))
    unknown = tmp / "falcon"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "falcon"}))
    cases.append(("unknown model_type", ["diagnose", str(unknown)],
                  f"error: {unknown / 'config.json'}: model_type 'falcon' is not supported by the hooked decoder "
                  "(supported: bloom, deepseek_v3, gemma2, gemma3_text, gpt2, llama, mistral, mixtral, mpt, phi3, "
                  "qwen2, qwen2_moe, qwen3, qwen3_moe); the nnsight backend "
                  "(--backend nnsight) can still record it"))
    truncated = tmp / "truncated"
    truncated.mkdir()
    (truncated / "workbench.json").write_text((tiny / "workbench.json").read_text())
    data = (tiny / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases.append(("truncated safetensors", ["diagnose", str(truncated)], "truncated or corrupted safetensors"))
    shapes = tmp / "shapes"
    shapes.mkdir()
    document = _config(tiny)
    document["config"]["d_model"] = 48
    (shapes / "workbench.json").write_text(json.dumps(document))
    (shapes / "model.safetensors").write_bytes(data)
    cases.append(("shapes disagree", ["diagnose", str(shapes)],
                  f"error: {shapes}: tensor embed.weight has shape (128, 32) but the config implies (128, 48)"))
    pickled = tmp / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((hf_tiny / "config.json").read_text())
    with open(pickled / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"model.embed_tokens.weight": Payload(tmp / "PWNED")}, handle)
    cases.append(("pickle with code", ["diagnose", str(pickled)], "refused to load"))
    from gguf_writer import write_gguf

    torch.manual_seed(0)
    llama = HookedDecoder(DecoderConfig(vocab_size=128, d_model=32, n_layers=1, n_heads=4, d_head=8, d_mlp=64,
                                        max_positions=64))
    gguf_path = write_gguf(llama, tmp / "iq2.gguf", quant_tensor="blk.0.ffn_up.weight")
    cases.append(("gguf with an unsupported quantisation", ["diagnose", str(gguf_path)],
                  f"error: {gguf_path}: tensor blk.0.ffn_up.weight uses quantisation IQ2_XXS, which the loader "
                  "does not dequantise"))
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text('name = "x"\n[probes]\ntokens = \n')
    cases.append(("invalid profile TOML", ["diagnose", str(tiny), "--profile", str(bad_toml)], f"{bad_toml}:3:"))
    unknown_key = tmp / "unknown_key.toml"
    unknown_key.write_text('[probes]\ntokenz = 5\n')
    cases.append(("profile with an unknown key", ["diagnose", str(tiny), "--profile", str(unknown_key)],
                  f"{unknown_key}:2: unknown key in [probes] 'tokenz'; did you mean 'tokens'?"))
    cases.append(("unknown profile name", ["diagnose", str(tiny), "--profile", "defualt"],
                  "unknown profile 'defualt'; did you mean 'default'?"))
    cases.append(("unknown device", ["kv", "llama-3.1-8b", "--device", "h100x"], "did you mean 'h100"))
    cases.append(("unknown architecture", ["kv", "llama-3.1-9b"], "llama-3.1-9b: not a checkpoint path"))
    cases.append(("negative tokens", ["diagnose", str(tiny), "--tokens", "-5"], "Invalid value for '--tokens'"))
    cases.append(("absurd tokens", ["diagnose", str(tiny), "--tokens", "99999999999"], "Invalid value for '--tokens'"))
    empty_text = tmp / "empty.txt"
    empty_text.write_text("  \n")
    cases.append(("empty --text file", ["diagnose", str(tiny), "--text", str(empty_text)],
                  f"error: {empty_text}: the text file is empty"))
    cases.append(("missing --text file", ["diagnose", str(tiny), "--text", str(tmp / "nope.txt")],
                  f"error: {tmp / 'nope.txt'}: no such file"))
    return cases


CASE_IDS = ["missing path", "no config.json", "config not JSON", "config lacks fields", "unknown model_type",
            "truncated safetensors", "shapes disagree", "pickle with code", "gguf with an unsupported quantisation", "invalid profile TOML",
            "profile with an unknown key", "unknown profile name", "unknown device", "unknown architecture",
            "negative tokens", "absurd tokens", "empty --text file", "missing --text file"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tiny, hf_tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default reports/ would land here
    cases = {name: (argv, expected) for name, argv, expected in bad_inputs(tmp_path, tiny, hf_tiny)}
    argv, expected = cases[case]
    result = invoke(*argv)
    assert result.exit_code == 2, (result.exit_code, result.output)
    # progress steps ("... loading model") may come first when stderr is not a terminal
    message = "\n".join(line for line in result.stderr.strip().splitlines() if line.strip() and not line.startswith("... "))
    if case in ("negative tokens", "absurd tokens"):  # typer's own usage error box
        assert expected in message
    else:
        assert "\n" not in message, message
        assert expected in message, message
    assert not (tmp_path / "reports").exists()
    assert not (tmp_path / "PWNED").exists()


def test_pickle_payload_never_runs_even_through_the_library(hf_tiny, tmp_path):
    from workbench.errors import CheckpointError
    from workbench.loading.checkpoint import load_model

    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text((hf_tiny / "config.json").read_text())
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"w": Payload(tmp_path / "PWNED")}, handle)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(folder)
    assert not (tmp_path / "PWNED").exists()
    os.sync()


def test_nnsight_backend_diagnoses_an_architecture_the_decoder_lacks(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=128)
    folder = tmp_path / "neox"
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    native = invoke("attention", str(folder), "--profile", "ci")
    assert native.exit_code == 2 and "--backend nnsight" in native.stderr
    result = invoke("diagnose", str(folder), "--profile", "ci", "--backend", "nnsight", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["run"]["backend"] == "nnsight" and report["model"]["model_type"] == "gpt_neox"
    assert report["attention"]["n_layers"] == 2 and report["residual"] is not None
    skipped = {f["analyzer"] for f in report["findings"] if f["check"] == "backend"}
    # what the nnsight backend cannot run is said, timing included (it was dropped silently before)
    assert skipped == {"length_extrapolation", "kv_memory", "timing"}
    watched = [f for f in report["findings"] if f["analyzer"] == "nonfinite" and f["check"] == "activations"]
    assert [f["status"] for f in watched] == ["pass"]  # activations are watched on this backend too


@pytest.mark.parametrize("checkpoint", ["tiny", "hf_tiny"])
def test_routing_command_never_lists_routing_as_not_run(checkpoint, request, tmp_path):
    # the MoE gets its routing section; the dense llama an empty one (its skip says why)
    folder = request.getfixturevalue(checkpoint)
    result = invoke("routing", str(folder), "--profile", "ci", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    not_run = [line for line in result.stdout.splitlines() if "not run:" in line]
    assert not_run and all("routing" not in line for line in not_run), not_run
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["routing"] is not None
    assert bool(report["routing"]["layers"]) == (checkpoint == "tiny")
    if checkpoint == "tiny":  # routed over four kinds of input, each kept apart
        assert set(report["routing"]["inputs"]) == {"natural", "structured", "repeated", "random"}


def test_a_five_token_prompt_gives_no_routing_verdict_it_cannot_support(tiny, tmp_path):
    result = invoke("routing", str(tiny), "--profile", "ci", "--prompt", "hello", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    routing = [f for f in report["findings"] if f["analyzer"] == "routing_collapse"]
    assert routing and not {f["status"] for f in routing} & {"fail", "warn"}
    dead = [f for f in routing if f["check"] == "dead_experts"]
    assert dead and all(f["status"] == "skip" and "too few" in f["message"] for f in dead)
