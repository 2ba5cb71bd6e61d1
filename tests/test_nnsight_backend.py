"""The nnsight backend: records from transformers models, equal to the hooked decoder's own.

Tiny randomly initialised transformers models, no network. GPT-NeoX (parallel attention + MLP,
which the decoder does not implement) checks the backend on a foreign family; Llama (GQA),
Mistral (sliding window) and Mixtral (MoE) are saved with ``save_pretrained``, loaded into the
hooked decoder with ``workbench.load_model`` and recorded both ways.

Tolerances: both paths run the same fp32 operations on the same weights (the decoder is tested
equal to transformers on full logits elsewhere) and the same reduction functions, so records
agree to float rounding: ``rtol=1e-5, atol=1e-6`` on statistics of size O(1). ``logit_std`` is
the one statistic computed differently: from the scores in the decoder, from log-probabilities
(scores minus the row's log-sum-exp, rounded once more) in the backend; ``atol=1e-5`` covers that
extra rounding of values of size log(T).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

import workbench
from workbench.hooks import attached_hook_count
from workbench.recorders import nnsight_backend
from workbench.recorders.attention import STATS as ATTENTION_STATS
from workbench.recorders.nnsight_backend import BackendError, describe, record_hf
from workbench.recorders.residual import STATS as RESIDUAL_STATS

VOCAB = 128
T = 16

TIGHT = {"rtol": 1e-5, "atol": 1e-6}


def _tokens(batch: int = 2, length: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _hf(config_class, model_class, **fields) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = config_class(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, **fields,
    )
    return model_class(config).eval()


@pytest.fixture(scope="module")
def neox() -> transformers.PreTrainedModel:
    return _hf(transformers.GPTNeoXConfig, transformers.GPTNeoXForCausalLM, use_parallel_residual=True)


def _twins(tmp_path_factory, name: str, config_class, model_class, **fields):
    hf = _hf(config_class, model_class, attn_implementation="eager", **fields)
    folder = tmp_path_factory.mktemp(name)
    hf.save_pretrained(folder)
    return hf, workbench.load_model(folder)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _twins(tmp_path_factory, "llama", transformers.LlamaConfig, transformers.LlamaForCausalLM,
                  num_key_value_heads=2)


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    return _twins(tmp_path_factory, "mistral", transformers.MistralConfig, transformers.MistralForCausalLM,
                  num_key_value_heads=2, sliding_window=5)


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    return _twins(tmp_path_factory, "mixtral", transformers.MixtralConfig, transformers.MixtralForCausalLM,
                  num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)


def _native(model, tokens, attention_mask=None):
    with workbench.record(model, attention=True, residual=True, routing=True, loss=True) as recording:
        model.hidden(tokens, attention_mask)
    return recording


def _finite(values: torch.Tensor) -> torch.Tensor:
    return values[~torch.isnan(values)]


def test_describe_finds_the_parts_of_a_foreign_family(neox) -> None:
    layout = describe(neox)
    assert layout.layers_path == "gpt_neox.layers"
    assert layout.final_norm_path == "gpt_neox.final_layer_norm"
    assert [(p.attention, p.mlp, p.router, p.window) for p in layout.layers] == [("attention", "mlp", None, None)] * 2
    assert (layout.n_heads, layout.d_head) == (4, 8)
    assert layout.scale == pytest.approx(8**-0.5, rel=1e-12)


def test_describe_finds_router_and_window(mixtral, mistral) -> None:
    assert [p.router for p in describe(mixtral[0]).layers] == ["mlp.gate", "mlp.gate"]
    assert describe(mixtral[0]).n_experts == 4 and describe(mixtral[0]).top_k == 2
    assert [p.window for p in describe(mistral[0]).layers] == [5, 5]


def test_foreign_family_records_have_the_right_shapes_and_sane_values(neox) -> None:
    tokens = _tokens()
    recording = record_hf(neox, tokens)
    attention = recording.attention
    assert (attention.n_layers, attention.n_heads, attention.n_tokens) == (2, 4, T)
    for stat in ATTENTION_STATS:
        assert attention.stats[stat].shape == (2, 4, T)
    entropy_norm = attention.entropy_norm
    assert torch.isnan(entropy_norm[:, :, 0]).all()  # position 0 sees one key
    assert ((entropy_norm[:, :, 1:] >= 0) & (entropy_norm[:, :, 1:] <= 1 + 1e-6)).all()
    assert ((attention.max_prob > 0) & (attention.max_prob <= 1 + 1e-6)).all()
    assert torch.equal(attention.sink_mass[:, :, 0], torch.ones(2, 4))  # one key: all weight on it
    positions = torch.arange(T, dtype=torch.float32)
    assert ((attention.mean_distance >= 0) & (attention.mean_distance <= positions + 1e-4)).all()
    assert ((attention.argmax >= 0) & (attention.argmax <= positions)).all()
    residual = recording.residual
    for stat in RESIDUAL_STATS:
        assert residual.stats[stat].shape == (2, T)
        assert torch.isfinite(residual.stats[stat]).all()
    assert (residual.resid_pre_norm > 0).all() and (residual.attn_cos.abs() <= 1 + 1e-6).all()
    assert residual.final_norm.shape == (T,)
    assert recording.routing is None  # a dense model
    assert recording.loss.loss.shape == (2, T - 1)


def test_foreign_family_loss_and_lens_agree_with_the_model(neox) -> None:
    tokens = _tokens()
    recording = record_hf(neox, tokens)
    with torch.no_grad():
        expected = neox(tokens, labels=tokens).loss
    torch.testing.assert_close(torch.tensor(recording.loss.mean), expected, rtol=1e-5, atol=1e-6)
    residual = recording.residual
    assert torch.equal(residual.lens_positions, torch.arange(T))
    torch.testing.assert_close(residual.lens_kl[-1], torch.zeros(T), rtol=0, atol=1e-6)
    assert residual.lens_top1[-1].all()
    assert (residual.lens_kl >= -1e-6).all()  # a KL divergence


def test_foreign_family_with_padding(neox) -> None:
    tokens = _tokens()
    mask = torch.ones_like(tokens)
    mask[1, :4] = 0  # left padding in row 1
    recording = record_hf(neox, tokens, attention_mask=mask)
    entropy_norm = recording.attention.entropy_norm[:, :, 1:]
    assert ((entropy_norm >= 0) & (entropy_norm <= 1 + 1e-6)).all()
    assert torch.isfinite(recording.residual.attn_ratio).all()


def test_nothing_stays_attached_and_attention_implementation_is_restored(neox) -> None:
    assert neox.config._attn_implementation == "sdpa"
    record_hf(neox, _tokens())
    assert neox.config._attn_implementation == "sdpa"
    assert attached_hook_count(neox) == 0
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        record_hf(neox, _tokens()[0])
    assert neox.config._attn_implementation == "sdpa"


def test_an_nnsight_wrapper_is_accepted(neox) -> None:
    from nnsight import NNsight

    tokens = _tokens()
    direct = record_hf(neox, tokens, residual=False, loss=False)
    wrapped = record_hf(NNsight(neox), tokens, residual=False, loss=False)
    for stat in ATTENTION_STATS:
        torch.testing.assert_close(wrapped.attention.stats[stat], direct.attention.stats[stat], rtol=0, atol=0,
                                   equal_nan=True)


def _assert_same_records(backend, native, positions=slice(None)) -> None:
    for stat in ATTENTION_STATS:
        tolerance = {"rtol": 1e-5, "atol": 1e-5} if stat == "logit_std" else TIGHT
        torch.testing.assert_close(backend.attention.stats[stat][..., positions],
                                   native.attention.stats[stat][..., positions], equal_nan=True, **tolerance)
    for stat in RESIDUAL_STATS:
        torch.testing.assert_close(backend.residual.stats[stat][..., positions],
                                   native.residual.stats[stat][..., positions], **TIGHT)
    torch.testing.assert_close(backend.residual.final_norm[positions], native.residual.final_norm[positions],
                               **TIGHT)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_backend_equals_the_hooked_decoder(family, request) -> None:
    hf, model = request.getfixturevalue(family)
    tokens = _tokens()
    backend, native = record_hf(hf, tokens), _native(model, tokens)
    _assert_same_records(backend, native)
    torch.testing.assert_close(backend.residual.lens_kl, native.residual.lens_kl, rtol=1e-5, atol=1e-6)
    assert torch.equal(backend.residual.lens_top1, native.residual.lens_top1)
    torch.testing.assert_close(backend.loss.loss, native.loss.loss, **TIGHT)
    assert backend.routing is None and native.routing is None


def test_backend_equals_the_hooked_decoder_with_left_padding(llama) -> None:
    hf, model = llama
    tokens = _tokens()
    mask = torch.ones_like(tokens)
    mask[0, :5] = 0
    backend = record_hf(hf, tokens, attention_mask=mask)
    native = _native(model, tokens, mask)
    # Padded query rows attend to garbage in both (each model's own rule); every row is real from 5 on.
    _assert_same_records(backend, native, positions=slice(5, None))


def test_backend_equals_the_hooked_decoder_on_moe(mixtral) -> None:
    hf, model = mixtral
    tokens = _tokens()
    backend, native = record_hf(hf, tokens), _native(model, tokens)
    _assert_same_records(backend, native)
    assert sorted(backend.routing.layers) == sorted(native.routing.layers) == [0, 1]
    for layer, routed in backend.routing.layers.items():
        expected = native.routing.layers[layer]
        assert torch.equal(routed.load, expected.load)  # the same experts chosen, token by token
        assert int(routed.load.sum()) == tokens.numel() * 2
        assert torch.equal(routed.coselect, expected.coselect)
        assert routed.tokens == expected.tokens == tokens.numel()
        torch.testing.assert_close(routed.importance, expected.importance, rtol=1e-5, atol=1e-6)
        assert math.isclose(routed.entropy, expected.entropy, rel_tol=1e-5, abs_tol=1e-6)
        assert routed.sample_experts == expected.sample_experts
        torch.testing.assert_close(torch.tensor(routed.sample_weights), torch.tensor(expected.sample_weights),
                                   **TIGHT)


def test_a_wrong_mask_is_detected(llama, monkeypatch) -> None:
    hf, _ = llama
    monkeypatch.setattr(nnsight_backend, "_windows", lambda config, n_layers: [2] * n_layers)
    with pytest.raises(BackendError, match="keys the causal/window/padding mask hides"):
        record_hf(hf, _tokens())


def test_a_model_without_decoder_layers_is_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.ModuleList([torch.nn.Linear(4, 4)]))
    with pytest.raises(BackendError, match="no list of decoder layers"):
        describe(model)


def test_recording_is_json_serialisable(mixtral) -> None:
    recording = record_hf(mixtral[0], _tokens())
    document = json.loads(json.dumps(recording.to_dict(), allow_nan=False))
    assert set(document) == {"attention", "residual", "routing", "loss"}
    assert len(document["routing"]["layers"]) == 2


def test_attention_weights_bytes() -> None:
    # What output_attentions holds for SmolLM2 (30 layers x 9 heads) at 8192 tokens: ~72 GB.
    assert nnsight_backend.attention_weights_bytes(30, 9, 8192) == 30 * 9 * 8192**2 * 4
