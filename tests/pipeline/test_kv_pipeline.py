"""diagnose's kv step: the same engine plan as `workbench kv`, the chart capped at the model's
limit, and a deployment too big for its device a warn (a deployment limit) unless the profile
asks for fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.pipeline import steps
from workbench.pipeline.kv import kv_report
from workbench.settings import get_architecture, load_profile


def profile_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    return path


def kv_step(config, profile):
    sections: dict = {}
    findings = {f.check: f for f in steps.kv(config, profile, sections)}
    return findings, sections["kv"]


def test_diagnose_and_workbench_kv_plan_alike():
    config = get_architecture("llama-3.1-8b")
    findings, section = kv_step(config, load_profile())
    report = kv_report("llama-3.1-8b")
    assert section["engine"] == report["engine"] == "vllm"
    assert section["plan"] == report["plan"]
    assert findings["fits"].status == "pass"
    assert section["plan"]["max_context"] == 131_072
    assert section["plan"]["max_context_reason"] == "model limit"
    for device in section["devices"]:  # the chart: no point past the model's limit
        assert max(point["context"] for point in device["curve"]) == config.max_positions
        assert device["max_context"] is None or device["max_context"] <= config.max_positions


def test_a_checkpoint_too_big_for_the_deployment_is_a_warn_in_diagnose():
    big = get_architecture("llama-3.1-405b")
    findings, section = kv_step(big, load_profile())
    assert findings["fits"].status == "warn" and not section["plan"]["fits"]
    assert "weights and workspace alone need" in findings["fits"].fix
    assert kv_report("llama-3.1-405b")["findings"][0]["status"] == "fail"  # workbench kv keeps fail


def test_a_profile_can_ask_for_fail(tmp_path):
    profile = load_profile(profile_file(tmp_path, '[deployment]\noversize = "fail"\n'))
    findings, _ = kv_step(get_architecture("llama-3.1-405b"), profile)
    assert findings["fits"].status == "fail"


def test_a_profile_context_past_the_limit_is_planned_and_warned(tmp_path):
    profile = load_profile(profile_file(tmp_path, "[deployment]\ncontext = 16384\n"))
    findings, section = kv_step(get_architecture("smollm2-135m"), profile)
    assert findings["context_within_model"].status == "warn"
    assert section["plan"]["beyond_model_limit"]


@pytest.mark.parametrize(("text", "message"), [('oversize = "maybe"', "oversize must be"),
                                               ('engine = "tgi"', "unknown engine 'tgi'")])
def test_bad_deployment_keys_name_the_file_and_line(tmp_path, text, message):
    path = profile_file(tmp_path, f"[deployment]\n{text}\n")
    with pytest.raises(ValueError, match=rf"{path.name}:2: .*{message}"):
        load_profile(path)
