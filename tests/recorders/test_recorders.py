"""The recorders on the hooked decoder: they change no result and their numbers are right.

Tiny seeded decoders from ``conftest.TINY_DECODERS`` (weights spread wider than the libraries'
defaults, so attention is far from uniform). References are computed here, independently of the
recorders' own code, in float64 from full tensors captured with hooks.

Tolerances: a record computed in fp32 from the same activations as a float64 reference differs by
float rounding only: ``rtol=1e-5, atol=1e-6`` for O(1) statistics over at most 12 keys. Logits of
the SDPA path and of the explicit path differ by the order of accumulation inside attention
(measured below 2e-6 at these sizes); ``1e-5`` two-sided, while a masking or scaling mistake moves
them by 1e-2 or more.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import SEQ_LEN, VOCAB

import workbench
from workbench.model.context import AttentionOptions
from workbench.model.hooks import attached_hook_count
from workbench.model.positions import alibi_slopes
from workbench.recorders import PatternRequest, record
from workbench.recorders.attention import STATS as ATTENTION_STATS
from workbench.recorders.attention import chunk_statistics, row_max
from workbench.recorders.loss import chunked_loss

T = SEQ_LEN
TIGHT = {"rtol": 1e-5, "atol": 1e-6}
LOGITS = {"rtol": 1e-5, "atol": 1e-5}


def _tokens(batch: int = 2, length: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
@pytest.mark.parametrize("chunk_size", [256, 5])  # one chunk, or three of up to 5 query rows
@pytest.mark.parametrize("name", ["llama", "window", "alibi", "gpt2", "moe"])
def test_recording_changes_no_logit(tiny_decoder, make_batch, name, chunk_size) -> None:
    model = tiny_decoder(name)
    tokens, mask, positions = make_batch(VOCAB)
    everything = dict(attention=True, residual=True, routing=True, loss=True,
                      patterns=[PatternRequest(0, 1)])
    fast = model(tokens, mask, position_ids=positions)
    with model.attention_options(chunk_rows=chunk_size), record(model, **everything):
        recorded = model(tokens, mask, position_ids=positions)
    real = mask.bool()
    torch.testing.assert_close(recorded[real], fast[real], **LOGITS)
    # the same explicit path, without recorders: bit-identical
    with model.attention_options(explicit=True, chunk_rows=chunk_size):
        explicit = model(tokens, mask, position_ids=positions)
    assert torch.equal(recorded, explicit)


def _visible(tokens_mask: torch.Tensor | None, batch: int, window: int | None) -> torch.Tensor:
    """``[B, 1, T, T]``: causal, within the window, real keys; a row that sees none sees all."""
    query, key = torch.arange(T)[:, None], torch.arange(T)[None, :]
    visible = (key <= query) & ((query - key < window) if window else True)
    visible = visible[None, None].expand(batch, 1, T, T)
    if tokens_mask is not None:
        visible = visible & tokens_mask.bool()[:, None, None, :]
    return visible | ~visible.any(-1, keepdim=True)


def _reference_statistics(
    probs: torch.Tensor, scores: torch.Tensor, visible: torch.Tensor, query_index: torch.Tensor | None = None,
    alibi: torch.Tensor | None = None,
) -> dict:
    """Per ``[H, T]`` (batch nan-mean) statistics of full ``[B, H, T, T]`` attention (or of the
    rows ``query_index`` of it), in float64. ``alibi`` slopes: the spread is that of the scores
    without ALiBi's bias ``m_h (k - q)``; the gap is that of the scores as given."""
    p, s = probs.double(), scores.double()
    top_two = torch.where(visible.expand_as(s), s, -torch.inf).topk(2, dim=-1).values
    gap = top_two[..., 0] - top_two[..., 1]
    visible = visible.expand_as(p)
    n_visible = visible.sum(-1).double()
    entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)
    max_prob, argmax = p.max(-1)
    first = visible.double().argmax(-1, keepdim=True)
    query = (torch.arange(T) if query_index is None else query_index)[:, None]
    key = torch.arange(p.shape[-1])[None, :]
    distance = (query - key).double()  # signed: a padding row that sees every key looks ahead
    if alibi is not None:
        s = s + alibi.double()[:, None, None] * distance
    s_visible = torch.where(visible, s, torch.zeros_like(s))
    mean = s_visible.sum(-1, keepdim=True) / n_visible[..., None]
    var = (torch.where(visible, s - mean, torch.zeros_like(s)) ** 2).sum(-1) / n_visible
    stats = {
        "entropy": entropy,
        "entropy_norm": torch.where(n_visible > 1, entropy / n_visible.log(), torch.nan),
        "max_prob": max_prob,
        "argmax": argmax.double(),
        "sink_mass": p.gather(-1, first).squeeze(-1),
        "mean_distance": (p * distance).sum(-1),
        "logit_std": torch.where(n_visible > 1, var.sqrt(), torch.nan),
        "logit_gap": torch.where(n_visible > 1, gap, torch.nan),
    }
    return {name: torch.nanmean(value, dim=0).float() for name, value in stats.items()}


@torch.no_grad()
@pytest.mark.parametrize("chunk_size", [3, 7])
@pytest.mark.parametrize("name,padded", [("llama", False), ("window", False), ("alibi", False),
                                         ("llama", True), ("window", True)])
def test_chunked_statistics_equal_those_of_the_full_pattern(
    tiny_decoder, make_batch, name, padded, chunk_size
) -> None:
    model = tiny_decoder(name)  # llama is GQA (4 query heads over 2 kv heads)
    tokens, mask, positions = make_batch(VOCAB)
    if not padded:
        mask, positions = None, None
    else:
        assert not mask.all()
    full: dict[str, list[torch.Tensor]] = {"hook_attn_scores": [], "hook_pattern": []}

    def keep(tensor, point):
        full[point.name.split(".")[-1]].append(tensor.clone())

    with model.hooks([(lambda n: n.endswith(("hook_pattern", "hook_attn_scores")), keep)]):
        model(tokens, mask, position_ids=positions)
    with model.attention_options(chunk_rows=chunk_size):
        with record(model, attention=True) as recording:
            model(tokens, mask, position_ids=positions)
            assert model.current_attention_options.chunk_rows == chunk_size
        assert model.current_attention_options.chunk_rows == chunk_size  # restored
    for layer, attn in enumerate(model.attention_modules()):
        visible = _visible(mask, tokens.shape[0], attn.window)
        pattern, scores = full["hook_pattern"][layer], full["hook_attn_scores"][layer]
        slopes = alibi_slopes(model.config.n_heads) if model.config.positions == "alibi" else None
        expected = _reference_statistics(pattern, scores, visible, alibi=slopes)
        for stat in ATTENTION_STATS:
            torch.testing.assert_close(recording.attention.stats[stat][layer], expected[stat], equal_nan=True,
                                       **TIGHT, msg=lambda m, s=stat, layer=layer: f"{s}, layer {layer}: {m}")
    assert recording.attention.stats["entropy_norm"].shape == (model.config.n_layers, model.config.n_heads, T)


@torch.no_grad()
def test_pattern_capture_respects_the_byte_budget(tiny_decoder) -> None:
    model = tiny_decoder("llama")
    tokens = _tokens()
    patterns = []
    with model.hooks([("blocks.1.attn.hook_pattern", lambda t, p: patterns.append(t.clone()))]):
        model(tokens)
    requests = [PatternRequest(1, head, start=2, stop=T) for head in range(4)]
    budget = 1000  # bytes; each chunk of one head is 3 rows x 12 keys x 4 bytes = 144
    with model.attention_options(chunk_rows=3), record(model, attention=True, patterns=requests,
                                                       pattern_budget_bytes=budget) as recording:
        model(tokens)
    kept = recording.attention.patterns
    assert sum(pattern.numel() * 4 for pattern in kept.values()) <= budget
    assert recording.attention.patterns_dropped > 0
    assert len(kept) == 4  # the first chunks of every head fit
    for (layer, head), pattern in kept.items():
        start = recording.attention.pattern_start[(layer, head)]
        assert start == 2
        # Chunked matmuls round differently from the full one (~1e-7): tight, not bitwise.
        expected = patterns[0][0, head, start : start + pattern.shape[0], :T]
        torch.testing.assert_close(pattern, expected, **TIGHT)
    with record(model, attention=True, patterns=requests) as generous:
        model(tokens)
    assert generous.attention.patterns_dropped == 0
    assert all(pattern.shape == (T - 2, T) for pattern in generous.attention.patterns.values())


@torch.no_grad()
def test_routing_counts_add_up(tiny_decoder) -> None:
    model = tiny_decoder("moe")  # layers 0 and 2 are MoE, 4 experts, top 2
    chosen: dict[int, list[torch.Tensor]] = {0: [], 2: []}

    def keep(indices, point):
        chosen[int(point.name.split(".")[1])].append(indices.reshape(-1))

    first, second = _tokens(2, T), _tokens(1, 5, seed=1)
    with record(model, routing=True) as recording, model.hooks(
        [(lambda n: n.endswith("hook_expert_indices"), keep)]
    ):
        model(first)
        model(second)  # routing adds up over every forward of the block
    n_tokens = first.numel() + second.numel()
    assert sorted(recording.routing.layers) == [0, 2]
    for layer, routed in recording.routing.layers.items():
        assert routed.tokens == n_tokens
        assert int(routed.load.sum()) == n_tokens * 2
        assert torch.equal(routed.load, torch.bincount(torch.cat(chosen[layer]), minlength=4))
        assert torch.equal(routed.coselect.diagonal(), routed.load)
        assert torch.equal(routed.coselect, routed.coselect.T)
        torch.testing.assert_close(routed.importance.sum(), torch.tensor(1.0), **TIGHT)
        assert 0 < routed.entropy_norm <= 1
        assert routed.sample_positions[0] == 0 and routed.sample_positions[-1] == T - 1


@torch.no_grad()
def test_loss_equals_cross_entropy_of_the_full_logits(tiny_decoder) -> None:
    model = tiny_decoder("gpt2")
    tokens = _tokens()
    with record(model, loss=True) as recording:
        logits = model(tokens)
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    assert recording.loss.loss.shape == (2, T - 1)
    torch.testing.assert_close(recording.loss.loss, expected, **TIGHT)
    torch.testing.assert_close(recording.loss.by_position, expected.mean(0), **TIGHT)
    hidden = model.hidden(tokens)
    torch.testing.assert_close(chunked_loss(hidden, tokens, model.unembed, chunk=4), expected, **TIGHT)
    # model(tokens) hands the recorder its logits; model.hidden(tokens) makes it unembed: same loss.
    with record(model, loss=True) as via_hidden:
        model.hidden(tokens)
    torch.testing.assert_close(via_hidden.loss.loss, recording.loss.loss, **TIGHT)


@torch.no_grad()
def test_loss_equals_the_transformers_loss(family_cases, tmp_path) -> None:
    reference = family_cases["llama"].hf_model()
    reference.save_pretrained(tmp_path)
    model = workbench.load_model(tmp_path)
    tokens = _tokens()
    with record(model, loss=True) as recording:
        model.hidden(tokens)
    expected = reference(tokens, labels=tokens).loss
    torch.testing.assert_close(torch.tensor(recording.loss.mean), expected, **TIGHT)


def _capture_stream(model, tokens):
    names = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
    stream: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with model.hooks([(lambda n: n.endswith(names), lambda t, p: stream[p.name.split(".")[-1]].append(t))]):
        final = model.hidden(tokens)
    return stream, final


@torch.no_grad()
def test_residual_write_statistics(tiny_decoder) -> None:
    model = tiny_decoder("llama")
    tokens = _tokens()
    stream, final = _capture_stream(model, tokens)
    with record(model, residual=True, lens=False) as recording:
        model.hidden(tokens)
    residual = recording.residual
    for layer in range(model.config.n_layers):
        pre, attn, mid, mlp = (stream[name][layer].double() for name in
                               ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out"))
        expected = {
            "resid_pre_norm": pre.norm(dim=-1),
            "attn_out_norm": attn.norm(dim=-1),
            "mlp_out_norm": mlp.norm(dim=-1),
            "attn_ratio": attn.norm(dim=-1) / pre.norm(dim=-1),
            "mlp_ratio": mlp.norm(dim=-1) / mid.norm(dim=-1),
            "attn_cos": (attn * pre).sum(-1) / (attn.norm(dim=-1) * pre.norm(dim=-1)),
            "mlp_cos": (mlp * mid).sum(-1) / (mlp.norm(dim=-1) * mid.norm(dim=-1)),
        }
        for stat, value in expected.items():
            torch.testing.assert_close(residual.stats[stat][layer], value.mean(0).float(), **TIGHT)
    torch.testing.assert_close(residual.final_norm, final.norm(dim=-1).mean(0), **TIGHT)
    assert residual.lens_kl is None


@torch.no_grad()
def test_logit_lens(tiny_decoder) -> None:
    model = tiny_decoder("llama")
    tokens = _tokens()
    stream, final = _capture_stream(model, tokens)
    with record(model, residual=True) as recording:
        model.hidden(tokens)
    residual = recording.residual
    n_layers = model.config.n_layers
    assert residual.lens_kl.shape == residual.lens_top1.shape == (n_layers, T)
    torch.testing.assert_close(residual.lens_kl[-1], torch.zeros(T), rtol=0, atol=1e-6)
    assert residual.lens_top1[-1].all()
    final_logp = torch.log_softmax(model.unembed(final[0]).double(), -1)
    first_layer = model.ln_final(stream["hook_resid_post"][0][0])
    layer_logp = torch.log_softmax(model.unembed(first_layer).double(), -1)
    expected_kl = (final_logp.exp() * (final_logp - layer_logp)).sum(-1)
    torch.testing.assert_close(residual.lens_kl[0], expected_kl.float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(residual.lens_top1[0], layer_logp.argmax(-1) == final_logp.argmax(-1))
    assert residual.lens_kl[0].min() > 1e-3  # the first layer is not already the final answer

    with record(model, residual=True, lens_positions=5) as subsampled:
        model.hidden(tokens)
    positions = subsampled.residual.lens_positions
    assert positions.tolist() == [0, 3, 6, 8, 11]  # evenly spaced, first and last included
    torch.testing.assert_close(subsampled.residual.lens_kl, residual.lens_kl[:, positions], **TIGHT)
    assert torch.equal(subsampled.residual.lens_top1, residual.lens_top1[:, positions])

    # model(tokens): the final distribution comes from the model's own logits, no second decode.
    with record(model, residual=True, lens_positions=5) as from_logits:
        model(tokens)
    torch.testing.assert_close(from_logits.residual.lens_kl, subsampled.residual.lens_kl, rtol=0, atol=1e-6)
    assert torch.equal(from_logits.residual.lens_top1, subsampled.residual.lens_top1)


def _assert_detached(model) -> None:
    assert attached_hook_count(model) == 0
    assert model.current_attention_options == AttentionOptions()  # no observer, no chunk budget


@torch.no_grad()
def test_nothing_stays_attached(tiny_decoder) -> None:
    model = tiny_decoder("moe")
    everything = dict(attention=True, residual=True, routing=True, loss=True, patterns=[PatternRequest(0, 0)])
    with record(model, **everything):
        model(_tokens())
    _assert_detached(model)

    def fail(tensor, point):
        raise RuntimeError("a hook failed mid-forward")

    with pytest.raises(RuntimeError, match="mid-forward"):
        with record(model, **everything), model.hooks([("blocks.1.hook_resid_pre", fail)]):
            model(_tokens())
    _assert_detached(model)


@torch.no_grad()
def test_recording_is_json_serialisable(tiny_decoder) -> None:
    model = tiny_decoder("moe")
    with record(model, attention=True, residual=True, routing=True, loss=True,
                patterns=[PatternRequest(0, 0, stop=4)]) as recording:
        model(_tokens())
    document = json.loads(json.dumps(recording.to_dict(), allow_nan=False))
    assert set(document) == {"attention", "residual", "routing", "loss"}
    assert document["attention"]["head_means"]["entropy_norm"][0][0] is not None
    assert document["attention"]["by_position"]["entropy_norm"][0][0][0] is None  # NaN at position 0
    assert len(document["attention"]["patterns"]) == 1
    assert [layer["layer"] for layer in document["routing"]["layers"]] == [0, 2]
    assert document["loss"]["n_positions"] == T - 1



@torch.no_grad()
@pytest.mark.parametrize("writable", [False, True])
def test_chunk_statistics_of_a_long_causal_chunk(writable) -> None:
    """Rows 560-599 of a 600-key causal pattern with logits of mean 25 and std 3 (a real model's
    scale or beyond), reduced as the explicit path hands them over: ``shared`` keys before the
    chunk need no mask, ``writable`` scores are shifted in place. Reference: float64, from the
    same fp32 scores. Tolerance: the spread is E[(s-m)^2] - E[s-m]^2 in fp32, relative error
    about 1e-7 (1 + z^2) with z (the top score's z-score) about 4 here, so ``rtol=1e-5``; entropy
    (a few nats) is ``-log p_max - E_p[s - m]``, both terms computed to about 1e-6: ``atol=1e-5``."""
    generator = torch.Generator().manual_seed(7)
    S, start, c, H = 600, 560, 40, 3
    query = torch.arange(start, start + c)
    visible = (torch.arange(S)[None, :] <= query[:, None])[None, None]  # (1, 1, c, S)
    scores = (torch.randn(1, H, c, S, generator=generator) * 3 + 25).masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    expected = _reference_statistics(probs, scores, visible, query_index=query)
    given = scores.clone()
    stats = chunk_statistics(probs, visible, query, given, shared=start, writable=writable)
    assert torch.equal(given, scores) != writable  # shifted in place only when allowed
    for stat in ATTENTION_STATS:
        tolerance = {"rtol": 1e-5, "atol": 1e-5} if stat in ("entropy", "entropy_norm") else TIGHT
        torch.testing.assert_close(stats[stat][0], expected[stat], **tolerance, msg=lambda m, s=stat: f"{s}: {m}")


@pytest.mark.parametrize("n", [5, 255, 256, 300, 1024, 2100])
def test_row_max_equals_max(n) -> None:
    generator = torch.Generator().manual_seed(n)
    x = torch.softmax(torch.randn(2, 3, 7, n, generator=generator), dim=-1)
    x[0, 0, 0, :] = 1 / n  # a row of ties: the first index wins
    x[0, 0, 1, -1] = x[0, 0, 1, 0] = 2.0  # a tie between the first key and the last
    values, indices = row_max(x)
    expected_values, expected_indices = x.max(dim=-1)
    assert torch.equal(values, expected_values) and torch.equal(indices, expected_indices)
    assert indices[0, 0, 0] == 0 and indices[0, 0, 1] == 0


@torch.no_grad()
def test_nested_attention_recording_is_an_error_and_the_outer_record_survives(tiny_decoder) -> None:
    model = tiny_decoder("llama")
    with record(model, attention=True) as outer:
        with pytest.raises(RuntimeError, match="do not nest"):
            with record(model, attention=True):
                pass
        with record(model, residual=True) as inner:  # recorders without attention stack
            model(_tokens())
    assert outer.attention is not None and outer.attention.n_tokens == T
    assert inner.residual is not None
    _assert_detached(model)
