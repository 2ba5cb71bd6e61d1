"""The pipeline: determinism, atomic and non-overwriting output, interruption, edge lengths."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench.backends.native import NativeBackend
from workbench.config import DecoderConfig
from workbench.loading.native import save_checkpoint
from workbench.model.decoder import HookedDecoder
from workbench.pipeline import guard
from workbench.pipeline import run as pipeline_run
from workbench.pipeline.run import RunError, RunOptions, run, write
from workbench.report.schema import strip_time_fields, validate
from workbench.settings import get_device

REPO = Path(__file__).resolve().parents[2]


def make_checkpoint(folder: Path, **overrides) -> Path:
    torch.manual_seed(0)
    fields = dict(vocab_size=128, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=48, max_positions=64,
                  name="tiny")
    fields.update(overrides)
    return save_checkpoint(HookedDecoder(DecoderConfig(**fields)), folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_same_inputs_give_byte_identical_reports_apart_from_time_fields(tiny, tmp_path):
    texts = []
    for name in ("a", "b"):
        options = RunOptions(command="diagnose", profile="ci", trace_dir=tmp_path / f"trace-{name}")
        folder = write(run(str(tiny), options), tmp_path / name)
        texts.append((folder / "report.json").read_text())
    first, second = (json.loads(t) for t in texts)
    assert first["time_fields"] == second["time_fields"] and "run.created_utc" in first["time_fields"]
    assert first != second  # times and ids differ...
    stripped = [json.dumps(strip_time_fields(r), sort_keys=True) for r in (first, second)]
    assert stripped[0] == stripped[1]  # ...and nothing else does


def test_two_runs_never_overwrite_each_other(tiny, tmp_path):
    options = RunOptions(command="attention", profile="ci")
    result = run(str(tiny), options)
    first = write(result, None, reports_root=tmp_path)
    second = write(result, None, reports_root=tmp_path)
    assert first != second and first.is_dir() and second.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])  # no temp left


def test_report_validates_and_carries_every_section(tiny):
    report = run(str(tiny), RunOptions(command="diagnose", profile="ci")).report
    assert validate(json.loads(json.dumps(report, default=str).replace("NaN", "null"))) == []
    for section in ("attention", "residual", "length", "kv", "timing"):
        assert report[section] is not None, section
    assert report["routing"] == {"layers": []}  # dense model: routing ran and found no MoE layer


TOO_LONG = (r"largest that fits is about ([\d,]+) tokens; a \1-token forward would take about [\d.]+ (s|min|h)"
            r"[\d s]* here \(extrapolated from 128- and 256-token forwards timed now\)")


def test_a_probe_too_large_for_the_host_is_refused_before_allocating(tmp_path, monkeypatch):
    """Refused from the planner's estimate (nothing of 100k tokens is allocated), naming the largest
    length that fits and how long it would take here, from short forwards timed now."""
    folder = make_checkpoint(tmp_path / "long", max_positions=4096)
    small = dataclasses.replace(get_device("cpu"), memory_bytes=64 * 2**20)  # a 64 MiB host
    monkeypatch.setattr(guard, "get_device", lambda name: small)
    with pytest.raises(RunError, match=TOO_LONG):
        run(str(folder), RunOptions(command="attention", tokens=100_000))


@pytest.mark.slow
def test_a_real_model_too_long_for_this_host_is_refused_with_a_time_estimate():
    with pytest.raises(RunError, match=TOO_LONG):
        run("smollm2", RunOptions(command="attention", tokens=1_000_000))


def test_a_device_this_host_lacks_is_refused_before_anything_loads(tiny, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(NativeBackend, "load", never)
    with pytest.raises(RunError, match=r"--device 'h100-sxm' is a device of the catalog"):
        run(str(tiny), RunOptions(command="attention", device="h100-sxm"))
    if not torch.cuda.is_available():
        with pytest.raises(RunError, match=r"--device cuda: this host has no CUDA device.*this host has: cpu"):
            run(str(tiny), RunOptions(command="attention", device="cuda"))


def test_progress_inside_the_forward_reaches_the_caller(tiny):
    ticks = []
    run(str(tiny), RunOptions(command="attention", profile="ci"), on_layer=ticks.append)
    assert ticks and ticks[-1].done == ticks[-1].n_layers == 2


def test_learned_positions_past_the_table_are_a_finding_not_a_crash(tmp_path):
    folder = make_checkpoint(tmp_path / "learned", positions="learned", max_positions=32)
    report = run(str(folder), RunOptions(command="extrapolation", profile="ci")).report
    table = [f for f in report["findings"] if f["check"] == "position_table"]
    # the table ends where the config says: an honest limit, a warn (a fail under the long profile)
    assert table and table[0]["status"] == "warn" and "past the learned position table" in table[0]["message"]


def test_sliding_window_past_the_window_and_length_one(tmp_path):
    folder = make_checkpoint(tmp_path / "window", sliding_window=8, max_positions=64)
    report = run(str(folder), RunOptions(command="attention", profile="ci", tokens=40)).report
    assert report["attention"]["n_tokens"] == 40
    # the farthest a query can look is window - 1 tokens back
    assert max(max(row) for layer in report["attention"]["by_position"]["mean_distance"] for row in layer) <= 7
    one = run(str(folder), RunOptions(command="attention", profile="ci", tokens=2)).report
    assert [f["status"] for f in one["findings"] if f["analyzer"] == "attention_saturation"] == ["skip"]


def start_and_wait_for_sweep(argv: list[str]) -> subprocess.Popen:
    """Start the CLI and return once it reports a length-sweep step on stderr."""
    # SIGINT as a terminal's foreground job has it: a run started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then installs no handler for it
    process = subprocess.Popen([sys.executable, "-c", "import cli; cli.main()", *argv], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    for line in process.stderr:
        if "probe," in line:  # "... natural probe, 1024 tokens"
            return process
        assert time.monotonic() < deadline, "the sweep never started"
    raise AssertionError(f"the command ended before the sweep: {process.wait()}")


def test_interrupt_during_a_sweep_leaves_no_report_and_exits_non_zero(tmp_path):
    folder = make_checkpoint(tmp_path / "slow", positions="rope", max_positions=2048, d_model=64, n_layers=4,
                             d_mlp=256, n_heads=4, d_head=16)
    profile = tmp_path / "slow.toml"
    profile.write_text("[probes]\nmax_tokens = 8192\nlengths = [1024, 2048, 3072, 4096, 6144, 8192]\n"
                       "extrapolation_factors = [1.0, 2.0, 4.0]\nbatch = 2\n")
    reports = tmp_path / "reports"
    process = start_and_wait_for_sweep(["extrapolation", str(folder), "--profile", str(profile),
                                        "--out", str(reports / "run")])
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted: no report was written" in stderr
    leftovers = list(reports.iterdir()) if reports.exists() else []
    assert leftovers == []


def test_sigterm_is_treated_like_an_interrupt(tmp_path):
    folder = make_checkpoint(tmp_path / "slow", positions="rope", max_positions=2048, d_model=64, n_layers=4,
                             d_mlp=256)
    profile = tmp_path / "slow.toml"
    profile.write_text("[probes]\nmax_tokens = 8192\nlengths = [2048, 4096, 8192]\nbatch = 2\n")
    process = start_and_wait_for_sweep(["extrapolation", str(folder), "--profile", str(profile),
                                        "--out", str(tmp_path / "reports" / "run")])
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert not (tmp_path / "reports").exists() or not list((tmp_path / "reports").iterdir())


def test_cuda_out_of_memory_becomes_a_run_error_with_the_largest_length(tiny, monkeypatch):
    def explode(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(NativeBackend, "load", explode)
    monkeypatch.setattr(guard, "device_memory_bytes", lambda device: 16 * 2**30)
    monkeypatch.setattr(pipeline_run, "check_device", lambda device: device)  # as if this host had cuda:0
    with pytest.raises(RunError, match=r"out of memory on cuda:0 with a 4,096-token probe; the largest probe "
                                       r"that fits is about [\d,]+ tokens"):
        run(str(tiny), RunOptions(command="attention", device="cuda:0", tokens=4096))
