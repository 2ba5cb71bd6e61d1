"""nonfinite in the checkpoint's own dtype (issue 14): a float16 checkpoint whose float16
forward overflows fails `nonfinite` with no flags given, and its healthy twin passes.

Ground truth comes from transformers in the test: the same folder loaded in float16 produces
non-finite hidden states (and in float32 it does not), at the layer the finding must name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cli

pytestmark = pytest.mark.usefixtures("single_thread")

# fp16's largest finite value is 65504; the overflowing twin's first MLP writes about 4x that.
FP16_MAX = 65504.0
OVERFLOW_TARGET = 4 * FP16_MAX


def _llama(overflow: bool, folder: Path) -> Path:
    """A tiny llama saved in float16; with ``overflow`` its layer-0 MLP output is scaled to about
    OVERFLOW_TARGET (finite in float32, past float16's range)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        seen: list[float] = []
        handle = mlp.register_forward_hook(lambda m, i, o: seen.append(float(o.abs().max())))
        for _ in range(8):  # gate, up and down together: the output grows about as their cube
            model(torch.arange(3, 35)[None])
            if not overflow or seen[-1] >= OVERFLOW_TARGET:
                break
            factor = min((OVERFLOW_TARGET * 1.5 / seen[-1]) ** (1 / 3), 1e3)
            for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                linear.weight.mul_(factor)
        handle.remove()
        weights = max(float(linear.weight.abs().max()) for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    assert weights < FP16_MAX  # storable in float16: only the activations overflow
    model.half().save_pretrained(folder)
    return folder


def _transformers_nonfinite_layer(folder: Path, dtype: torch.dtype, tokens: torch.Tensor) -> int | None:
    """The first layer whose output hidden state is not finite, by transformers (None: all finite)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    with torch.no_grad():
        hidden = model(tokens, output_hidden_states=True).hidden_states  # embeddings, then one per layer
    for layer, state in enumerate(hidden[1:]):
        if not bool(torch.isfinite(state).all()):
            return layer
    return None


@pytest.mark.parametrize("overflow", [True, False], ids=["overflows-fp16", "healthy-twin"])
def test_float16_checkpoint_is_checked_in_float16_without_flags(overflow: bool, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = _llama(overflow, tmp_path / "ckpt")
    tokens = torch.arange(3, 35)[None]
    fp16_layer = _transformers_nonfinite_layer(folder, torch.float16, tokens)
    assert _transformers_nonfinite_layer(folder, torch.float32, tokens) is None
    assert (fp16_layer is not None) is overflow, fp16_layer

    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, ["attention", str(folder), "--tokens", "32", "--quiet", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["dtype"] == "float32"  # no flag asked for float16
    checks = {(f["analyzer"], f["check"]): f for f in report["findings"]}
    stored = checks[("nonfinite", "activations_float16")]
    assert checks[("nonfinite", "activations")]["status"] == "pass"  # float32 stays finite
    if overflow:
        assert result.exit_code == 1, result.output
        assert stored["status"] == "fail"
        assert stored["where"]["layer"] == fp16_layer
    else:
        assert stored["status"] == "pass"
        assert report["summary"]["analyzers"]["nonfinite"] == "pass"


def test_a_float32_checkpoint_gets_no_second_probe() -> None:
    from workbench.recorders.nonfinite import stored_half_dtype

    assert stored_half_dtype("float32", torch.float32) is None
    assert stored_half_dtype("float16", torch.float32) is torch.float16
    assert stored_half_dtype("float16", torch.float16) is None  # already computed in it
    assert stored_half_dtype("bfloat16", torch.float32) is torch.bfloat16


@pytest.mark.parametrize("storable", [True, False], ids=["round-trips-in-place", "needs-a-copy"])
def test_the_stored_dtype_probe_leaves_the_model_as_it_was(storable: bool) -> None:
    from workbench.config import DecoderConfig
    from workbench.model.decoder import HookedDecoder
    from workbench.recorders.nonfinite import _round_trips, watch_in_dtype

    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=48, max_positions=64,
                           tie_embeddings=True)
    model = HookedDecoder(config).eval()
    if storable:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(parameter.half().float())
    assert _round_trips(model, torch.float16) is storable
    tokens = torch.randint(3, 96, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(tokens)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert watch_in_dtype(model, tokens, torch.float16) is None  # healthy: finite in float16 too
    with torch.no_grad():
        after = model(tokens)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, state[key]), key
    assert model.unembed.weight is model.embed.weight  # still tied
