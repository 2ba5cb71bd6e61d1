"""The family registry: every supported model_type is named by the refusal of an unknown one and
in the README, and each new family is a record of its own module (config reader, renames,
transform)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workbench.errors import CheckpointError
from workbench.loading import families

README = Path(__file__).resolve().parents[2] / "README.md"
NEW = ("deepseek_v3", "gemma2", "gemma3_text", "mpt", "phi3", "qwen3", "qwen3_moe")


def test_supported_lists_every_family() -> None:
    assert set(NEW) <= set(families.SUPPORTED)
    assert families.SUPPORTED == tuple(sorted(families.FAMILIES))
    for kind in NEW:
        family = families.FAMILIES[kind]
        assert kind in family.model_types and callable(family.read_config) and family.renames


def test_unknown_model_type_names_every_supported_type(tmp_path) -> None:
    path = tmp_path / "config.json"
    with pytest.raises(CheckpointError) as error:
        families.config_from_hf({"model_type": "falcon"}, path)
    message = str(error.value)
    assert message.startswith(f"{path}: model_type 'falcon' is not supported")
    listed = re.search(r"\(supported: ([^)]*)\)", message).group(1).split(", ")
    assert listed == list(families.SUPPORTED)


def test_readme_names_every_supported_type() -> None:
    table = README.read_text().split("### Families the hooked decoder loads", 1)[1]
    named = set(re.findall(r"`([a-z0-9_]+)`", table.split("\n\n", 3)[2]))
    assert set(families.SUPPORTED) <= named, set(families.SUPPORTED) - named


@pytest.mark.parametrize("model_type, change, message", [
    ("mpt", {"attn_config": {"qk_ln": True}}, "qk_ln"),
    ("mpt", {"expansion_ratio": 2}, "expansion_ratio"),
    ("mpt", {"attn_config": {"alibi": False}}, "ALiBi"),
    ("phi3", {"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}},
     "short_factor"),
])
def test_family_refusals_name_the_file_and_problem(model_type, change, message, tmp_path) -> None:
    import transformers

    small = dict(vocab_size=64, num_hidden_layers=1) if model_type == "phi3" else dict(vocab_size=64, n_layers=1)
    data = transformers.AutoConfig.for_model(model_type, **small).to_dict()
    data.update(change)
    with pytest.raises(CheckpointError, match=message) as error:
        families.config_from_hf(data, tmp_path / "config.json")
    assert str(tmp_path / "config.json") in str(error.value)
