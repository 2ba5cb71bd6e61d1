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
from helpers import VOCAB, FamilyCase

import workbench
from workbench.backends.nnsight import BackendError, describe, record_hf
from workbench.backends.nnsight import layout as nnsight_layout
from workbench.backends.nnsight import trace as nnsight_backend
from workbench.model.hooks import attached_hook_count
from workbench.recorders.attention import STATS as ATTENTION_STATS
from workbench.recorders.residual import STATS as RESIDUAL_STATS

T = 12
# The families both paths load, chosen for what each exercises: GQA (llama), a sliding window on
# every layer (mistral) or per layer_types (qwen2-window), MoE on every layer (mixtral) or mixed
# with dense layers and a shared expert (qwen2_moe), ALiBi with the residual added inside the
# sublayers (bloom), Conv1D weights and learned positions (gpt2).
TWIN_CASES = ("llama", "mistral-window", "qwen2-window", "mixtral", "qwen2_moe", "bloom", "gpt2")

TIGHT = {"rtol": 1e-5, "atol": 1e-6}


def _tokens(vocab: int = VOCAB, batch: int = 2, length: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def neox() -> transformers.PreTrainedModel:
    """GPT-NeoX: parallel attention + MLP and partial rotary, which the decoder does not implement."""
    case = FamilyCase("gpt_neox", "gpt_neox", dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, use_parallel_residual=True, rotary_pct=0.5,
    ))
    return case.hf_model()


@pytest.fixture(scope="module", params=TWIN_CASES)
def twins(request, family_cases, tmp_path_factory):
    """(transformers model, the same weights in the hooked decoder)."""
    hf = family_cases[request.param].hf_model()
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, workbench.load_model(folder)


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
    parts = [(p.attention, p.mlp, p.router, p.window) for p in layout.layers]
    assert parts == [("attention", "mlp", None, None)] * 2
    assert (layout.n_heads, layout.d_head) == (4, 8)
    assert layout.scale == pytest.approx(8**-0.5, rel=1e-12)


def test_describe_finds_routers_and_windows(family_cases) -> None:
    qwen2_moe = describe(family_cases["qwen2_moe"].hf_model())
    assert [p.router for p in qwen2_moe.layers] == ["mlp.gate", None, "mlp.gate"]  # layer 1 is dense
    assert (qwen2_moe.n_experts, qwen2_moe.top_k, qwen2_moe.norm_topk_prob) == (4, 2, False)
    assert [p.window for p in describe(family_cases["qwen2-window"].hf_model()).layers] == [None, 4, 4]
    assert [p.window for p in describe(family_cases["mistral-window"].hf_model()).layers] == [4, 4]
    bloom = describe(family_cases["bloom"].hf_model())
    assert (bloom.layers_path, bloom.final_norm_path, bloom.layers[0].attention) == (
        "transformer.h", "transformer.ln_f", "self_attention")


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
    assert ((attention.mean_distance >= -1e-5) & (attention.mean_distance <= positions + 1e-4)).all()
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
        wrapped_stat, direct_stat = wrapped.attention.stats[stat], direct.attention.stats[stat]
        assert torch.equal(wrapped_stat.nan_to_num(-1), direct_stat.nan_to_num(-1))


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


def _assert_same_routing(backend, native, n_tokens: int) -> None:
    if native.routing is None:
        assert backend.routing is None
        return
    assert sorted(backend.routing.layers) == sorted(native.routing.layers)
    for layer, routed in backend.routing.layers.items():
        expected = native.routing.layers[layer]
        assert torch.equal(routed.load, expected.load)  # the same experts chosen, token by token
        assert int(routed.load.sum()) == n_tokens * routed.top_k
        assert torch.equal(routed.coselect, expected.coselect)
        assert routed.tokens == expected.tokens == n_tokens
        torch.testing.assert_close(routed.importance, expected.importance, **TIGHT)
        assert math.isclose(routed.entropy, expected.entropy, rel_tol=1e-5, abs_tol=1e-6)
        assert routed.sample_experts == expected.sample_experts
        torch.testing.assert_close(torch.tensor(routed.sample_weights), torch.tensor(expected.sample_weights),
                                   **TIGHT)


def test_backend_equals_the_hooked_decoder(twins) -> None:
    hf, model = twins
    tokens = _tokens()
    backend, native = record_hf(hf, tokens), _native(model, tokens)
    assert native.attention.max_prob[:, :, 1:].min() < 0.9  # patterns are not one-hot
    _assert_same_records(backend, native)
    torch.testing.assert_close(backend.residual.lens_kl, native.residual.lens_kl, **TIGHT)
    assert torch.equal(backend.residual.lens_top1, native.residual.lens_top1)
    torch.testing.assert_close(backend.loss.loss, native.loss.loss, **TIGHT)
    _assert_same_routing(backend, native, tokens.numel())


def test_backend_equals_the_hooked_decoder_with_left_padding(family_cases, make_batch, tmp_path) -> None:
    hf = family_cases["llama"].hf_model()
    hf.save_pretrained(tmp_path)
    model = workbench.load_model(tmp_path)
    tokens, mask, _ = make_batch(VOCAB, lengths=(T, 9), seq_len=T)
    backend = record_hf(hf, tokens, attention_mask=mask)
    native = _native(model, tokens, mask)
    # Padded query rows attend by each model's own rule (their output is meaningless); from
    # position 3 on every row is a real token.
    _assert_same_records(backend, native, positions=slice(T - 9, None))


def test_a_wrong_mask_is_detected(family_cases, monkeypatch) -> None:
    hf = family_cases["llama"].hf_model()
    monkeypatch.setattr(nnsight_layout, "_windows", lambda config, n_layers: [2] * n_layers)
    with pytest.raises(BackendError, match="keys the causal/window/padding mask hides"):
        record_hf(hf, _tokens())


def test_decompose_reads_writes_or_updated_streams() -> None:
    generator = torch.Generator().manual_seed(0)
    pre, attn, mlp = (torch.randn(1, 4, 8, generator=generator) for _ in range(3))
    mid, post = pre + attn, pre + attn + mlp
    for outputs in ((attn, mlp), (mid, post)):  # sublayers return writes / the updated stream
        attn_out, resid_mid, mlp_out = nnsight_backend.decompose(0, pre, *outputs, post)
        torch.testing.assert_close(attn_out, attn, **TIGHT)
        torch.testing.assert_close(resid_mid, mid, **TIGHT)
        torch.testing.assert_close(mlp_out, mlp, **TIGHT)
    with pytest.raises(BackendError, match="layer 3: its attention and MLP outputs do not add up"):
        nnsight_backend.decompose(3, pre, attn, 2 * mlp, post)  # e.g. a norm after the MLP


def test_a_model_without_decoder_layers_is_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.ModuleList([torch.nn.Linear(4, 4)]))
    with pytest.raises(BackendError, match="no list of decoder layers"):
        describe(model)


def test_recording_is_json_serialisable(family_cases) -> None:
    recording = record_hf(family_cases["mixtral"].hf_model(), _tokens())
    document = json.loads(json.dumps(recording.to_dict(), allow_nan=False))
    assert set(document) == {"attention", "residual", "routing", "loss"}
    assert len(document["routing"]["layers"]) == 2


def test_attention_weights_bytes() -> None:
    # What output_attentions holds for SmolLM2 (30 layers x 9 heads) at 8192 tokens: ~72 GB.
    assert nnsight_backend.attention_weights_bytes(30, 9, 8192) == 30 * 9 * 8192**2 * 4
