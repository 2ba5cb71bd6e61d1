"""`workbench diagnose` on a tiny, default-initialised model of each new family: no false fail.

A freshly initialised model (transformers' own init, std 0.02) is healthy by every analyzer's
definition: near-uniform attention, balanced routing, finite activations. Any ``fail`` here
would be an analyzer misreading what a family changes (soft-capped scores, QK-norm, a sigmoid
router with a selection bias, MLA's cache).
"""

from __future__ import annotations

import json

import pytest
import torch
from test_families_deepseek_v3 import CASES as DEEPSEEK
from test_families_gemma2 import CASES as GEMMA
from test_families_mpt import CASES as MPT
from test_families_phi3 import CASES as PHI3
from test_families_qwen3 import CASES as QWEN3
from typer.testing import CliRunner

import cli

CASES = [QWEN3["qwen3"], QWEN3["qwen3_moe"], GEMMA["gemma2"], GEMMA["gemma3_text"], PHI3["phi3-longrope"], MPT["mpt-6-heads-clip"],
         DEEPSEEK["deepseek_v3"]]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_diagnose_gives_no_false_fail(case, tmp_path) -> None:
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(case.hf_config(), dtype=torch.float32)
    model.save_pretrained(tmp_path / "model")
    result = CliRunner().invoke(cli.app, ["diagnose", str(tmp_path / "model"), "--profile", "ci",
                                          "--out", str(tmp_path / "report"), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    fails = [f"{f['analyzer']}/{f['check']}: {f['message']}" for f in report["findings"] if f["status"] == "fail"]
    assert not fails
    assert report["model"]["model_type"] == case.model_type
    ran = {f["analyzer"] for f in report["findings"] if f["status"] != "skip"}
    assert {"attention_saturation", "nonfinite", "kv_memory"} <= ran
    if case.model_type == "gemma2":
        assert report["attention"]["softcap"] == case.kwargs["attn_logit_softcapping"]
