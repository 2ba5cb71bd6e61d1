"""Loading hardening: every bad input is a one-line CheckpointError naming the file; good
checkpoints (native, GGUF) round-trip to identical logits."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf_writer import write_gguf

import workbench
from workbench.config import RopeScaling
from workbench.errors import CheckpointError
from workbench.loading.gguf import SUPPORTED_TYPES

pytestmark = pytest.mark.usefixtures("single_thread")


def load_error(source, named: Path | str) -> str:
    """The message of the CheckpointError ``load_model(source)`` raises; one line naming ``named``."""
    with pytest.raises(CheckpointError) as caught:
        workbench.load_model(source)
    message = str(caught.value)
    assert "\n" not in message, message
    assert str(named) in message, message
    return message


@pytest.fixture
def llama_folder(family_cases, tmp_path) -> Path:
    """A valid tiny transformers llama folder (config.json + model.safetensors)."""
    folder = tmp_path / "llama"
    family_cases["llama"].hf_model().save_pretrained(folder)
    return folder


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del data[key]
    path.write_text(json.dumps(data))


# --- files and folders ----------------------------------------------------------------------


def test_missing_path(tmp_path) -> None:
    assert "no such file" in load_error(tmp_path / "nowhere", tmp_path / "nowhere")


def test_folder_without_config(tmp_path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert "no config.json" in load_error(tmp_path, tmp_path)


def test_weights_file_is_not_a_checkpoint(llama_folder) -> None:
    path = llama_folder / "model.safetensors"
    assert "not a checkpoint" in load_error(path, path)


def test_config_json_alone_has_no_weights(llama_folder) -> None:
    path = llama_folder / "config.json"
    assert "no weights" in load_error(path, path)


def test_folder_without_weights(llama_folder) -> None:
    (llama_folder / "model.safetensors").unlink()
    assert "no weights" in load_error(llama_folder, llama_folder)


# --- config.json ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["{not json", "", "[1, 2]", b"\xff\xfe\x00"], ids=["broken", "empty", "list", "binary"]
)
def test_config_that_is_not_a_json_object(text, llama_folder) -> None:
    path = llama_folder / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    load_error(llama_folder, path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model_type": None}, "lacks 'model_type'"),
        # a missing key means transformers' default (32 layers for llama), which the weights contradict
        ({"num_hidden_layers": None, "layer_types": None},
         "describes 32 layers (num_hidden_layers is missing from config.json: transformers' default)"),
        ({"tie_word_embeddings": "false"}, "'tie_word_embeddings' must be true or false"),
        ({"hidden_size": "wide"}, "hidden_size"),
        ({"rope_parameters": "fast"}, "malformed"),
        ({"num_attention_heads": 3}, "does not describe a decoder"),
        ({"hidden_act": "swiglu-plus"}, "activation 'swiglu-plus'"),
    ],
    ids=[
        "no-model-type",
        "no-layers",
        "tie-string",
        "hidden-size-string",
        "rope-string",
        "heads-vs-kv",
        "activation",
    ],
)
def test_config_lacking_or_malformed_fields(changes: dict, message: str, llama_folder) -> None:
    edit_config(llama_folder, **changes)
    assert message in load_error(llama_folder, llama_folder / "config.json")


def test_unknown_model_type_lists_supported_and_nnsight(llama_folder) -> None:
    edit_config(llama_folder, model_type="falcon")
    message = load_error(llama_folder, llama_folder / "config.json")
    assert "'falcon'" in message and "nnsight" in message
    for family in ("gpt2", "llama", "mistral", "qwen2", "mixtral", "qwen2_moe", "bloom"):
        assert family in message


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom", "mixtral"])
def test_shapes_that_disagree_with_config(name: str, family_cases, tmp_path) -> None:
    """config.json edited after saving: the tensors no longer fit, and the loader says so."""
    family_cases[name].hf_model().save_pretrained(tmp_path)
    key = {"gpt2": "n_embd"}.get(name, "hidden_size")
    data = json.loads((tmp_path / "config.json").read_text())
    edit_config(tmp_path, **{key: data[key] + 16})
    assert "config" in load_error(tmp_path, tmp_path)


def test_fewer_layers_in_config_than_in_weights(llama_folder) -> None:
    edit_config(llama_folder, num_hidden_layers=1, layer_types=None)
    assert "describes 1 layer but the weights hold 2" in load_error(llama_folder, llama_folder / "config.json")


def test_more_layers_in_config_than_in_weights(llama_folder) -> None:
    edit_config(llama_folder, num_hidden_layers=3, layer_types=None)
    assert "describes 3 layers but the weights hold 2" in load_error(llama_folder, llama_folder / "config.json")


# --- safetensors ----------------------------------------------------------------------------


def test_truncated_safetensors(llama_folder) -> None:
    path = llama_folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupted" in load_error(llama_folder, path)


@pytest.mark.parametrize("damage", ["header-length", "header-json"])
def test_corrupted_safetensors_header(damage: str, llama_folder) -> None:
    path = llama_folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "header-length":
        data[:8] = (2**40).to_bytes(8, "little")  # a header longer than the file
    else:
        data[8:20] = b"#!garbage!#{"
    path.write_bytes(bytes(data))
    assert "truncated or corrupted" in load_error(llama_folder, path)


def test_sharded_index_naming_a_missing_shard(family_cases, tmp_path) -> None:
    family_cases["llama"].hf_model().save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    assert "missing" in load_error(tmp_path, shard)


# --- pickles --------------------------------------------------------------------------------


class TouchOnLoad:
    """Unpickling this would create ``marker``: the payload of a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(str(self.marker)),))


class SystemOnLoad:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch, about the raw pickle
@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
@pytest.mark.parametrize("payload", [TouchOnLoad, SystemOnLoad], ids=["path-touch", "os-system"])
def test_malicious_pickle_is_refused_and_not_run(payload, container: str, llama_folder, tmp_path) -> None:
    (llama_folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    weights = llama_folder / "pytorch_model.bin"
    state = {"model.embed_tokens.weight": torch.zeros(2, 2), "evil": payload(marker)}
    if container == "torch-zip":
        torch.save(state, weights)
    else:
        weights.write_bytes(pickle.dumps(state))
    message = load_error(llama_folder, weights)
    assert "refused to load" in message and "unsupported" in message.lower()
    assert "\x1b" not in message  # no terminal escapes from torch's message
    assert not marker.exists(), "the pickle's payload ran"


def test_truncated_pickle(family_cases, tmp_path) -> None:
    reference = family_cases["llama"].hf_model()
    reference.config.save_pretrained(tmp_path)
    weights = tmp_path / "pytorch_model.bin"
    torch.save(reference.state_dict(), weights)
    weights.write_bytes(weights.read_bytes()[:4000])
    assert "truncated or corrupted" in load_error(tmp_path, weights)


# --- GGUF -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_equals_transformers_gguf_loader(arch: str, tiny_decoder, tmp_path) -> None:
    """The same file through transformers' GGUF loader and ours; llama q/k are interleaved, qwen2's not."""
    import transformers

    model = tiny_decoder("llama")
    if arch == "qwen2":  # with q/k/v biases, as Qwen2 has
        model = tiny_decoder(model.config.replace(qkv_bias=True, model_type="qwen2"))
    path = write_gguf(model, tmp_path / f"{arch}.gguf", arch=arch)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    )
    loaded = workbench.load_model(path)
    assert loaded.config.model_type == arch and loaded.config.qkv_bias == (arch == "qwen2")
    tokens = torch.randint(0, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        expected = reference.eval()(tokens).logits
        torch.testing.assert_close(expected, model(tokens), atol=1e-5, rtol=1e-5)  # the writer is right
        torch.testing.assert_close(loaded(tokens), expected, atol=1e-5, rtol=1e-5)


def test_gguf_linear_rope_scaling(tiny_decoder, tmp_path) -> None:
    model = tiny_decoder("llama")
    path = write_gguf(model, tmp_path / "linear.gguf", rope_scaling=("linear", 2.0))
    loaded = workbench.load_model(path)
    assert loaded.config.rope_scaling == RopeScaling("linear", 2.0)
    scaled = tiny_decoder(model.config.replace(rope_scaling=RopeScaling("linear", 2.0)))  # same weights
    tokens = torch.randint(0, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), scaled(tokens), atol=1e-5, rtol=1e-5)
        assert (scaled(tokens) - model(tokens)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rope_scaling=("yarn", 4.0)), "RoPE scaling 'yarn'"),
        (dict(extra_tensors={"rope_freqs.weight": np.ones(4, dtype=np.float32)}), "rope_freqs.weight"),
        (dict(arch="falcon"), "'falcon' is not supported"),
    ],
    ids=["yarn", "llama3-rope-freqs", "architecture"],
)
def test_gguf_unsupported_metadata(kwargs: dict, message: str, tiny_decoder, tmp_path) -> None:
    path = write_gguf(tiny_decoder("llama"), tmp_path / "model.gguf", **kwargs)
    assert message in load_error(path, path)
    with pytest.raises(CheckpointError, match=message):
        workbench.load_config(path)  # refused before any weight is read


def test_gguf_unsupported_quantisation(tiny_decoder, tmp_path) -> None:
    assert "IQ2_XXS" not in SUPPORTED_TYPES
    model = tiny_decoder("llama")  # ffn_up: d_mlp 48 x d_model 32 = 6 blocks of 256
    path = write_gguf(model, tmp_path / "iq2.gguf", quant_tensor="blk.0.ffn_up.weight")
    message = load_error(path, path)
    assert "IQ2_XXS" in message and "blk.0.ffn_up.weight" in message


def test_gguf_truncated(tiny_decoder, tmp_path) -> None:
    path = write_gguf(tiny_decoder("llama"), tmp_path / "cut.gguf")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    load_error(path, path)


def test_gguf_garbage(tmp_path) -> None:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    assert "GGUF" in load_error(path, path)


# --- native checkpoints ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "gpt2", "alibi", "moe", "yarn"])
def test_native_round_trip(name: str, tiny_decoder, tmp_path) -> None:
    model = tiny_decoder(name)
    folder = workbench.save_checkpoint(model, tmp_path / "native")
    loaded = workbench.load_model(folder)
    assert loaded.config == model.config
    tokens = torch.randint(0, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    if model.config.tie_embeddings:
        assert loaded.unembed.weight is loaded.embed.weight


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda doc: doc.update(format="something-else"), "not a workbench checkpoint"),
        (lambda doc: doc.update(version=99), "version 99"),
        (lambda doc: doc["config"].update(flux_capacitor=1), "flux_capacitor"),
        (lambda doc: doc["config"].pop("d_model"), "d_model"),
    ],
    ids=["format", "version", "unknown-field", "missing-field"],
)
def test_native_bad_config(edit, message: str, tiny_decoder, tmp_path) -> None:
    folder = workbench.save_checkpoint(tiny_decoder("llama"), tmp_path / "native")
    path = folder / "workbench.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    assert message in load_error(folder, path)


def test_native_missing_weights(tiny_decoder, tmp_path) -> None:
    folder = workbench.save_checkpoint(tiny_decoder("llama"), tmp_path / "native")
    (folder / "model.safetensors").unlink()
    assert "missing" in load_error(folder, folder / "model.safetensors")
