"""The fuzz table of malformed inputs (issue 15), run through the real `workbench` command.

Every row is one class of bad input a fuzz run met: a config.json with a wrong type or an
invalid number, pathological JSON, absurd sizes, safetensors of the wrong dtype, a shard path
that leaves the folder, a named pipe, broken GGUF metadata, broken tokenizer files, broken
profiles and options. Each must end in exactly one line on stderr naming the file (or option)
and the problem, exit code 2, within seconds, with nothing written. A few inputs are valid but
hostile (NaN weights in an MoE, tokens that are escape sequences, a 200 MB --text file): those
must run to a report, not crash.

Most rows write tiny files into ``tmp_path``; none needs a model forward.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import cli

pytestmark = pytest.mark.usefixtures("single_thread")

runner = CliRunner()
# "Within seconds": generous for a shared 2-core machine, far below a hang or a 100k-layer build.
SECONDS_PER_ROW = 20.0


class Hung(Exception):
    """A row that did not finish within the alarm (the failure mode of a named pipe)."""


def invoke(argv: list[str], seconds: float = 60.0):
    """Run the CLI in-process under an alarm; returns (result, elapsed seconds)."""

    def alarm(signum, frame):
        raise Hung(f"{argv} still running after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(seconds))
    started = time.perf_counter()
    try:
        result = runner.invoke(cli.app, argv, catch_exceptions=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if isinstance(result.exception, Hung):
        raise result.exception
    return result, time.perf_counter() - started


# --- tiny inputs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A tiny transformers llama folder (config.json + model.safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2)
    folder = tmp_path_factory.mktemp("fuzz") / "llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def copy_of(folder: Path, tmp: Path, name: str = "ckpt") -> Path:
    target = tmp / name
    shutil.copytree(folder, target)
    return target


def edit_config(folder: Path, **changes) -> Path:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))  # NaN is written as the JSON extension Python reads back
    return path


def with_rope(folder: Path, **params) -> Path:
    data = json.loads((folder / "config.json").read_text())
    rope = dict(data.get("rope_parameters") or {"rope_type": "default", "rope_theta": 10000.0})
    rope.update(params)
    return edit_config(folder, rope_parameters=rope)


def retype_tensor(folder: Path, dtype: torch.dtype) -> Path:
    """Rewrite model.safetensors with the embedding stored as ``dtype``."""
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    name = "model.embed_tokens.weight"
    tensors[name] = tensors[name].to(dtype)
    save_file(tensors, str(path))
    return path


def write_gguf(path: Path, *, head_count=4, bos_token_id: int | None = None,
               tokenizer_model: str | None = None) -> Path:
    """A tiny llama GGUF file; ``head_count`` may be any GGUF scalar (0, NaN as float32)."""
    import gguf

    d_model, d_mlp, vocab, layers = 32, 48, 96, 1
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(d_model)
    writer.add_feed_forward_length(d_mlp)
    if isinstance(head_count, float):
        writer.add_float32("llama.attention.head_count", head_count)
    else:
        writer.add_head_count(head_count)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    if tokenizer_model is not None:
        writer.add_tokenizer_model(tokenizer_model)
        writer.add_token_list([f"t{i}" for i in range(vocab)])
    if bos_token_id is not None:
        writer.add_bos_token_id(bos_token_id)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, d_model), "output_norm.weight": (d_model,),
              "blk.0.attn_norm.weight": (d_model,), "blk.0.ffn_norm.weight": (d_model,),
              "blk.0.attn_q.weight": (d_model, d_model), "blk.0.attn_k.weight": (d_model, d_model),
              "blk.0.attn_v.weight": (d_model, d_model), "blk.0.attn_output.weight": (d_model, d_model),
              "blk.0.ffn_gate.weight": (d_mlp, d_model), "blk.0.ffn_up.weight": (d_mlp, d_model),
              "blk.0.ffn_down.weight": (d_model, d_mlp)}
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_profile(tmp: Path, text: str | bytes) -> Path:
    path = tmp / "profile.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# --- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One malformed input: ``build(tmp, llama_dir)`` -> (argv, substrings the line must hold)."""

    name: str
    build: Callable[[Path, Path], tuple[list[str], list[str]]]


def _config_row(name: str, change: Callable[[Path], Path], *needles: str, command: str = "diagnose",
                names_folder: bool = False) -> Row:
    """A copy of the llama folder changed by ``change``; the line names the file ``change``
    returns (or the folder, for refusals about the whole checkpoint)."""
    def build(tmp: Path, llama: Path):
        folder = copy_of(llama, tmp)
        path = change(folder)
        return [command, str(folder)], [str(folder if names_folder else path), *needles]

    return Row(name, build)


def _deep_json(tmp: Path, llama: Path):
    folder = copy_of(llama, tmp)
    path = folder / "config.json"
    path.write_text('{"model_type": "llama", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return ["diagnose", str(folder)], [str(path), "nest"]


def _shard_outside(tmp: Path, llama: Path):
    folder = copy_of(llama, tmp)
    outside = tmp / "outside.safetensors"
    (folder / "model.safetensors").rename(outside)
    names = load_file(str(outside)).keys()
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": dict.fromkeys(names, "../outside.safetensors")}))
    return ["diagnose", str(folder)], [str(index), "../outside.safetensors", "outside"]


def _fifo_weights(tmp: Path, llama: Path):
    folder = copy_of(llama, tmp)
    weights = folder / "model.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    return ["diagnose", str(folder)], [str(weights), "not a regular file"]


def _fifo_tokenizer(tmp: Path, llama: Path):
    folder = copy_of(llama, tmp)
    os.mkfifo(folder / "tokenizer.json")
    return ["diagnose", str(folder)], [str(folder / "tokenizer.json"), "not a regular file"]


def _fifo_text(tmp: Path, llama: Path):
    path = tmp / "prompt.txt"
    os.mkfifo(path)
    return ["diagnose", str(llama), "--text", str(path)], [str(path), "not a regular file"]


def _native_wrong_type(tmp: Path, llama: Path):
    from workbench.config import DecoderConfig
    from workbench.loading.native import save_checkpoint
    from workbench.model.decoder import HookedDecoder

    config = DecoderConfig(vocab_size=96, d_model=32, n_layers=1, n_heads=4, d_head=8, d_mlp=48, max_positions=64)
    folder = save_checkpoint(HookedDecoder(config), tmp / "native")
    path = folder / "workbench.json"
    document = json.loads(path.read_text())
    document["config"]["tie_embeddings"] = "false"
    path.write_text(json.dumps(document))
    return ["diagnose", str(folder)], [str(path), "tie_embeddings", "true or false"]


def _garbage_header(backend: str):
    def build(tmp: Path, llama: Path):
        folder = copy_of(llama, tmp)
        weights = folder / "model.safetensors"
        weights.write_bytes((64).to_bytes(8, "little") + b"\x00garbage{" * 8)
        return ["attention", str(folder), "--backend", backend], [str(weights), "safetensors"]

    return build


def _gguf_row(name: str, needles: list[str], **metadata) -> Row:
    def build(tmp: Path, llama: Path):
        path = write_gguf(tmp / "tiny.gguf", **metadata)
        return ["diagnose", str(path)], [str(path), *needles]

    return Row(name, build)


def _tokenizer_row(name: str, content: bytes, *needles: str) -> Row:
    def build(tmp: Path, llama: Path):
        folder = copy_of(llama, tmp)
        path = folder / "tokenizer.json"
        data = content
        if content == b"EMPTY-WORDLEVEL":  # a well-formed tokenizer with no vocabulary at all
            from tokenizers import Tokenizer, models

            data = Tokenizer(models.WordLevel({}, unk_token="<unk>")).to_str().encode()
        path.write_bytes(data)
        return ["diagnose", str(folder)], [str(path), *needles]

    return Row(name, build)


def _profile_row(name: str, text: str | bytes, *needles: str) -> Row:
    def build(tmp: Path, llama: Path):
        path = write_profile(tmp, text)
        return ["diagnose", str(llama), "--profile", str(path)], [str(path), *needles]

    return Row(name, build)


def _option_row(name: str, options: list[str], *needles: str) -> Row:
    def build(tmp: Path, llama: Path):
        return ["diagnose", str(llama), *options], list(needles)

    return Row(name, build)


def _bad_utf8_text(tmp: Path, llama: Path):
    path = tmp / "prompt.txt"
    path.write_bytes(b"The capital of \xff\xfe France")
    return ["diagnose", str(llama), "--text", str(path)], [str(path), "UTF-8"]


ROWS = [
    _config_row("tie_word_embeddings is a string",
                lambda f: edit_config(f, tie_word_embeddings="false"), "tie_word_embeddings", "true or false"),
    _config_row("vocab_size is a float", lambda f: edit_config(f, vocab_size=96.0), "vocab_size"),
    _config_row("rms_norm_eps is a string", lambda f: edit_config(f, rms_norm_eps="1e-6"), "rms_norm_eps"),
    Row("100k-deep nested JSON", _deep_json),
    # diagnose's length sweep is refused by the memory guard; attention alone fits in memory and
    # is refused by the layer count, before 100,000 blocks are built
    _config_row("100,000 layers", lambda f: edit_config(f, num_hidden_layers=100_000), "GiB", names_folder=True),
    _config_row("100,000 layers (attention)", lambda f: edit_config(f, num_hidden_layers=100_000),
                "100,000 layers", "hold 2", command="attention", names_folder=True),
    _config_row("10^12 layers", lambda f: edit_config(f, num_hidden_layers=10**12), "num_hidden_layers",
                "beyond any decoder"),
    _config_row("absurd hidden size", lambda f: edit_config(f, hidden_size=2**22, intermediate_size=2**24),
                "weights alone", "GiB", names_folder=True),
    _config_row("rope_theta 0", lambda f: with_rope(f, rope_theta=0), "rope_theta"),
    _config_row("rope_theta negative", lambda f: with_rope(f, rope_theta=-10000.0), "rope_theta"),
    _config_row("rope_theta NaN", lambda f: with_rope(f, rope_theta=math.nan), "rope_theta"),
    _config_row("rope scaling factor 0", lambda f: with_rope(f, rope_type="linear", factor=0), "factor"),
    _config_row("rope scaling factor negative", lambda f: with_rope(f, rope_type="linear", factor=-2.0),
                "factor"),
    _config_row("norm eps negative", lambda f: edit_config(f, rms_norm_eps=-1e-6), "rms_norm_eps"),
    _config_row("norm eps NaN", lambda f: edit_config(f, rms_norm_eps=math.nan), "rms_norm_eps"),
    _config_row("bos id outside the vocabulary", lambda f: edit_config(f, bos_token_id=10**9), "bos_token_id"),
    _config_row("int32 weights", lambda f: retype_tensor(f, torch.int32), "int32", "floating"),
    _config_row("bool weights", lambda f: retype_tensor(f, torch.bool), "bool", "floating"),
    _config_row("complex weights", lambda f: retype_tensor(f, torch.complex64), "complex64", "floating"),
    Row("sharded index naming ../", _shard_outside),
    Row("named pipe as model.safetensors", _fifo_weights),
    Row("named pipe as tokenizer.json", _fifo_tokenizer),
    Row("named pipe as --text", _fifo_text),
    Row("workbench.json with a wrong type", _native_wrong_type),
    Row("garbage safetensors header (native)", _garbage_header("native")),
    Row("garbage safetensors header (nnsight)", _garbage_header("nnsight")),
    _gguf_row("GGUF zero head count", ["head_count"], head_count=0),
    _gguf_row("GGUF NaN head count", ["head_count"], head_count=math.nan),
    _gguf_row("GGUF absurd BOS id", ["bos_token_id"], bos_token_id=2**31 - 1, tokenizer_model="llama"),
    _gguf_row("GGUF unknown tokenizer model", ["tokenizer", "'nonsense'"], tokenizer_model="nonsense"),
    _tokenizer_row("tokenizer.json is a JSON list", b"[1, 2, 3]", "JSON object"),
    _tokenizer_row("tokenizer.json is garbage", b"\x00\xffnot a tokenizer", "tokenizer"),
    _tokenizer_row("tokenizer.json is empty", b"", "empty"),
    _tokenizer_row("tokenizer with an empty vocabulary", b"EMPTY-WORDLEVEL", "tokenizer"),
    _profile_row("profile: string where an integer belongs", '[probes]\ntokens = "512"\n', "tokens"),
    _profile_row("profile: float where an integer belongs", "[probes]\ntokens = 512.5\n", "tokens"),
    _profile_row("profile: float deployment batch", "[deployment]\nbatch = 1.5\n", "batch"),
    _profile_row("profile: negative length", "[probes]\ntokens = -5\n", "tokens"),
    _profile_row("profile: negative sweep length", "[probes]\nlengths = [-256]\n", "lengths"),
    _profile_row("profile: negative factor", "[probes]\nextrapolation_factors = [-2.0]\n",
                 "extrapolation_factors"),
    _profile_row("profile: zero repeat block", "[probes]\nrepeat_block = 0\n", "repeat_block"),
    _profile_row("profile: NaN threshold", "[thresholds.attention_saturation]\nonehot_prob = nan\n",
                 "onehot_prob"),
    _profile_row("profile: infinite threshold", "[thresholds.length_extrapolation]\nmax_loss_ratio = inf\n",
                 "max_loss_ratio"),
    _profile_row("profile: huge tokens", "[probes]\ntokens = 1000000000000\nmax_tokens = 1000000000000\n",
                 "[probes] tokens", "GiB"),
    _profile_row("profile: huge batch", "[probes]\nbatch = 1000000000\n", "length sweep", "GiB"),
    _profile_row("profile: huge max_tokens and sweep",
                 "[probes]\nmax_tokens = 1000000000000\nextrapolation_factors = [1000000.0]\n", "length sweep",
                 "GiB"),
    _profile_row("profile: not UTF-8", b'name = "caf\xe9"\n', "UTF-8"),
    _option_row("--prompt with invalid UTF-8", ["--prompt", "caf\udce9 au lait"], "--prompt", "UTF-8"),
    Row("--text file with invalid UTF-8", _bad_utf8_text),
    _option_row("--dtype int8", ["--dtype", "int8"], "--dtype", "int8"),
    _option_row("huge --seed", ["--seed", str(2**70)], "--seed"),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_malformed_input_is_one_line_exit_2_fast_and_writes_nothing(row: Row, llama_dir, tmp_path,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default reports/ folder would land here
    argv, needles = row.build(tmp_path, llama_dir)
    out = tmp_path / "out"
    result, seconds = invoke([*argv, "--quiet", "--out", str(out)])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert seconds < SECONDS_PER_ROW, seconds
    assert not out.exists() and not (tmp_path / "reports").exists()


# --- valid but hostile: these run to a report -----------------------------------------------


def report_of(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def test_nan_router_weights_in_an_moe_become_a_nonfinite_finding_not_a_crash(tmp_path, monkeypatch):
    """NaN in a router gives NaN routing statistics: diagnose still writes its report (exit 1),
    with the nonfinite fail at the layer and the analyzers that read NaN records skipped."""
    from transformers import MixtralConfig, MixtralForCausalLM

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                           num_local_experts=4, num_experts_per_tok=2)
    model = MixtralForCausalLM(config)
    with torch.no_grad():
        model.model.layers[1].mlp.gate.weight[0, :4] = float("nan")
    model.save_pretrained(tmp_path / "moe")
    out = tmp_path / "out"
    result, _ = invoke(["diagnose", str(tmp_path / "moe"), "--tokens", "32", "--quiet", "--out", str(out)],
                       seconds=300)
    assert result.exit_code == 1, (result.output, result.exception)
    findings = report_of(out)["findings"]
    failed = {(f["analyzer"], f["check"]): f for f in findings if f["status"] == "fail"}
    assert failed[("nonfinite", "activations")]["where"]["layer"] == 1
    assert failed[("nonfinite", "weights")]["where"]["layer"] == 1
    skipped = {f["analyzer"] for f in findings if f["status"] == "skip" and f["check"] == "nonfinite_inputs"}
    assert skipped == {"attention_saturation", "routing_collapse", "length_extrapolation"}


def _hostile_tokenizer(folder: Path, hostile: list[str], vocab_size: int) -> None:
    """A word-level tokenizer whose vocabulary holds ``hostile`` strings (escape sequences, HTML)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for token in hostile:
        vocab[token] = len(vocab)
    while len(vocab) < vocab_size:
        vocab[f"w{len(vocab)}"] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>"}))


def test_tokens_that_are_escape_sequences_or_html_do_not_crash(llama_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = copy_of(llama_dir, tmp_path)
    hostile = ["\x1b[2J\x1b[31m", "\x1b]8;;http://x\x07", "<script>alert(1)</script>", "[bold]x[/]", "[/]",
               "</div>", "\x07\x08", "&amp;"]
    _hostile_tokenizer(folder, hostile, vocab_size=96)
    out = tmp_path / "out"
    result, _ = invoke(["attention", str(folder), "--prompt", " ".join(hostile * 4), "--out", str(out)],
                       seconds=300)
    assert result.exit_code in (0, 1), (result.output, result.exception)
    attention = report_of(out)["attention"]
    assert set(hostile) <= set(attention["token_labels"])  # the strings are kept as data
    probe = report_of(out)["probes"][0]
    assert "starting with BOS (id 1)" in probe["description"]


def test_a_200_mb_text_file_is_cut_before_it_is_read_whole(llama_dir, tmp_path, monkeypatch):
    """--text on a 200 MB file (sparse: cheap on disk) runs in seconds: it is read up to the
    limit and tokenized only as far as the probe needs."""
    from workbench.inputs import TEXT_READ_LIMIT_BYTES

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "huge.txt"
    with open(path, "wb") as handle:
        handle.write(b"The quick brown fox jumps over the lazy dog. " * 100)
        handle.truncate(200 * 2**20)
    assert path.stat().st_size > 10 * TEXT_READ_LIMIT_BYTES
    out = tmp_path / "out"
    result, seconds = invoke(["attention", str(llama_dir), "--text", str(path), "--tokens", "32", "--quiet",
                              "--out", str(out)], seconds=120)
    assert result.exit_code in (0, 1), (result.output, result.exception)
    assert report_of(out)["probes"][0]["length"] == 32
    assert seconds < SECONDS_PER_ROW, seconds
