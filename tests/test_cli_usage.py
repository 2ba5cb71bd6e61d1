"""What a CI user meets at the command line: exit codes, one-line errors before anything loads,
``--out`` that never silently becomes ``DIR-2``, hidden library warnings, ``--version``/``-h``,
inert escape sequences, and ``workbench check``'s one line on bad input.

The device check runs the real console script in a subprocess (as CI would), with a checkpoint
path that does not exist: the device error comes first, so nothing was loaded."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cli
from workbench.config import DecoderConfig
from workbench.loading.native import save_checkpoint
from workbench.model.decoder import HookedDecoder
from workbench.pipeline import preflight

runner = CliRunner()
WORKBENCH = Path(sys.executable).parent / "workbench"
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"


def invoke(*args: str):
    return runner.invoke(cli.app, list(args))


def stderr_lines(result) -> list[str]:
    """stderr without the "... step" lines a non-terminal gets."""
    return [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("... ")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8, d_mlp=48,
                           max_positions=64, name="tiny")
    return save_checkpoint(HookedDecoder(config), tmp_path_factory.mktemp("ckpt") / "tiny")


# --- the device: checked before anything loads, in the real console script -------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
@pytest.mark.parametrize(("device", "says"), [
    ("cuda", "--device cuda: this host has no CUDA device"),
    ("gpu", "'gpu' is not a torch device name"),
    ("h100-sxm", "'h100-sxm' is a device of the catalog, for `workbench kv --device`"),
])
def test_device_this_host_lacks_is_one_line_exit_2_before_loading(device, says, tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    started = time.perf_counter()
    result = subprocess.run([str(WORKBENCH), "diagnose", str(missing), "--device", device],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and says in lines[0] and "this host has: cpu" in lines[0]
    assert "no-such-checkpoint" not in result.stderr  # the device came first: nothing was opened
    assert result.stdout == "" and list(tmp_path.iterdir()) == []
    assert time.perf_counter() - started < 120


def test_kv_with_a_torch_device_gets_a_hint():
    result = invoke("kv", "llama-3.1-8b", "--device", "cuda")
    assert result.exit_code == 2
    assert stderr_lines(result) == [
        "error: --device 'cuda' is a torch device; `workbench kv` plans memory for a device of the catalog "
        "(h100-sxm, a100-80gb, l4, ...: see `workbench devices`). To run on cuda, give it to an analysis "
        "command: workbench diagnose --device cuda"]
    assert invoke("kv", "llama-3.1-8b", "--device", "h100-sxm", "--quiet").exit_code == 0


def _help_text(*argv: str) -> str:
    """The help as one line of words (rich draws boxes and wraps)."""
    return " ".join(re.sub("[\u2500-\u257f]", " ", invoke(*argv).stdout).split())


def test_help_says_which_device_is_which():
    diagnose = _help_text("diagnose", "--help")
    kv = _help_text("kv", "-h")
    assert "Torch device to run on" in diagnose and "`workbench kv --device`" in diagnose
    kv_lower = " ".join(kv.lower().split())
    assert "device catalog name" in kv_lower and "not a torch device" in kv_lower


def test_version_and_short_help():
    from workbench import __version__

    version = invoke("--version")
    assert version.exit_code == 0 and version.stdout.strip() == f"workbench {__version__}"
    short = invoke("-h")
    assert short.exit_code == 0 and "diagnose" in short.stdout and "Exit codes" in short.stdout


# --- output paths: checked first; --out never silently DIR-2 -----------------------------------


def test_out_absent_or_empty_is_used_as_given(tiny, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (tmp_path / "absent" / "deeper", empty):
        result = invoke("attention", str(tiny), "--profile", "ci", "--out", str(folder), "--quiet")
        assert result.exit_code == 0, result.output
        assert result.stdout.split() == ["pass", str(folder)]
        assert {p.name for p in folder.iterdir()} == {"report.json", "report.html"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["absent", "empty"]  # no "-2" anywhere


def test_out_holding_files_is_refused_unless_force(tiny, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    result = invoke("attention", str(tiny), "--profile", "ci", "--out", str(folder))
    assert result.exit_code == 2
    assert stderr_lines(result) == [f"error: --out {folder}: the folder holds files; give an empty or new "
                                    "folder, or --force to write the report into it (replacing an earlier "
                                    "report there)"]
    assert "loading model" not in result.stderr  # refused before the run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    for _ in range(2):  # a second --force replaces the first report
        forced = invoke("profile", str(tiny), "--profile", "ci", "--out", str(folder), "--force", "--quiet")
        assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "report.html", "report.json", "trace"]
    assert (folder / "notes.txt").read_text() == "keep me"
    report = json.loads((folder / "report.json").read_text())
    assert [p.name for p in (folder / "trace" / "forward").iterdir()] == [Path(report["artifacts"]["chrome_trace"]).name]
    replaced = invoke("attention", str(tiny), "--profile", "ci", "--out", str(folder), "--force", "--quiet")
    assert replaced.exit_code == 0
    assert not (folder / "trace").exists()  # the earlier run's trace does not linger beside this report


@pytest.mark.parametrize("case", ["out in /proc", "out under a file", "json names a folder", "json in /proc"])
def test_unwritable_output_paths_are_refused_before_the_run(case, tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    argv, expected = {
        "out in /proc": (["--out", "/proc/x"], "error: --out /proc/x: cannot create anything in /proc"),
        "out under a file": (["--out", str(a_file / "r")], f"error: --out {a_file / 'r'}: {a_file} is a file"),
        "json names a folder": (["--json", str(tmp_path)], f"error: --json {tmp_path}: is a folder"),
        "json in /proc": (["--json", "/proc/x/r.json"], "error: --json /proc/x/r.json: cannot create anything"),
    }[case]
    result = invoke("attention", str(tiny), "--profile", "ci", *argv)
    assert result.exit_code == 2, result.output
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert "loading model" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # no reports/, no partial output


# --- what reaches the terminal -----------------------------------------------------------------


def _pickle_checkpoint(folder: Path) -> Path:
    from transformers import LlamaConfig

    folder.mkdir()
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    (folder / "config.json").write_text(config.to_json_string())
    with open(folder / "pytorch_model.bin", "wb") as handle:  # protocol 4: torch warns about it
        pickle.dump({"w": torch.zeros(2)}, handle, protocol=4)
    return folder


def test_library_warnings_only_with_verbose(tmp_path):
    """torch warns (UserWarning) about the pickle protocol before the workbench refuses the file;
    the user reads the refusal alone, unless --verbose."""
    folder = _pickle_checkpoint(tmp_path / "pickled")
    argv = [str(WORKBENCH), "attention", str(folder), "--profile", "ci", "--out", str(tmp_path / "r")]
    quiet = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    verbose = subprocess.run(argv + ["--verbose"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == verbose.returncode
    assert "Warning" not in quiet.stderr, quiet.stderr
    assert "UserWarning" in verbose.stderr, verbose.stderr


def test_escape_sequences_never_reach_the_terminal(tmp_path):
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=128, d_model=32, n_layers=1, n_heads=4, d_head=8, d_mlp=48,
                           max_positions=64, name=f"evil{ESCAPES}name")
    folder = save_checkpoint(HookedDecoder(config), tmp_path / "evil")
    result = invoke("attention", str(folder), "--profile", "ci", "--out", str(tmp_path / "r"),
                    "--prompt", f"hello {ESCAPES} world")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mname" in result.stdout  # shown, inert
    missing = invoke("attention", str(tmp_path / f"x{ESCAPES}"))
    assert missing.exit_code == 2 and "\x1b" not in missing.stderr and "\\x1b[2J" in missing.stderr


def test_bfloat16_on_a_cpu_without_it_says_it_will_be_slower(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "cpu_has_native", lambda dtype: False)
    result = invoke("attention", str(tiny), "--profile", "ci", "--dtype", "bfloat16", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert "note: this CPU has no native bfloat16 arithmetic" in result.stderr
    monkeypatch.setattr(preflight, "cpu_has_native", lambda dtype: True)
    result = invoke("attention", str(tiny), "--profile", "ci", "--dtype", "bfloat16", "--out", str(tmp_path / "s"))
    assert result.exit_code == 0 and "note:" not in result.stderr
    assert preflight.dtype_notes("cpu", "float32") == [] and preflight.dtype_notes("cuda", "bfloat16") == []


# --- workbench check ----------------------------------------------------------------------------


def test_check_on_bad_input_prints_one_line_not_pytest(tiny, tmp_path):
    bad_profile = invoke("check", str(tiny), "--profile", "defualt")
    assert bad_profile.exit_code == 2
    [line] = stderr_lines(bad_profile)
    assert line.startswith("error: unknown profile 'defualt'; did you mean 'default'?")
    assert bad_profile.stdout == ""
    truncated = tmp_path / "truncated"  # found only while the suite loads the weights
    shutil.copytree(tiny, truncated)
    data = (tiny / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    result = subprocess.run([str(WORKBENCH), "check", str(truncated), "--profile", "ci"], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "", result.stdout  # no "!!! Exit", no "no tests ran"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {truncated}") and "safetensors" in lines[0], lines


def test_progress_inside_the_forward_reaches_a_ci_log(tiny, tmp_path, monkeypatch):
    """Without a terminal, a long forward logs its block count and time left (here after every
    block: the interval is set to 0)."""
    monkeypatch.setattr(cli, "LOG_EVERY_SECONDS", 0)
    result = invoke("attention", str(tiny), "--profile", "ci", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    ticks = [line for line in result.stderr.splitlines() if line.startswith("... recording") and ": layer " in line]
    assert ticks and ticks[-1].endswith("layer 2/2"), result.stderr


def test_kv_shows_a_model_name_with_escapes_inert(tmp_path):
    from transformers import LlamaConfig

    folder = tmp_path / "kv"
    folder.mkdir()
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    data = json.loads(config.to_json_string())
    data["_name_or_path"] = f"evil{ESCAPES}[bold]x[/bold]"
    (folder / "config.json").write_text(json.dumps(data))
    result = invoke("kv", str(folder / "config.json"), "--device", "l4", "--context", "64")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\\x1b[2J" in result.stdout
    assert "[bold]x[/bol" in result.stdout  # shown as typed, not taken for markup (the title may wrap)
