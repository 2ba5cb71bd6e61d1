"""Tests of workbench.zoo: every member builds, loads, and shows (or lacks) its pathology.

The fast tests check the catalogue, the copy task, the balancing loss and the build mechanics
(threads, RNG, determinism) on a few training steps. The slow tests build the whole zoo once
(a module-scoped fixture) and measure each pathology with the model itself, through hooks:
attention entropy for the saturation pair, expert load shares for the MoE pair, the copy loss
at 1x-8x the trained context for the length pair.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import workbench
from workbench import inputs, structured_text, zoo
from workbench.model.decoder import HookedDecoder
from workbench.model.hooks import attached_hook_count, hooks

CONTEXT = zoo.TRAINED_CONTEXT
PROBE_BLOCK = 32  # the longest block the members were trained on
FIRST_QUERY = 8  # entropy is averaged over queries that see at least this many + 1 keys


# --- measurements ----------------------------------------------------------------------------


def repeated_probe(vocab_size: int, length: int, block_len: int = PROBE_BLOCK) -> torch.Tensor:
    n_repeats = -(-length // block_len)
    return inputs.repeated_random_blocks(vocab_size, block_len, n_repeats, batch=16, seed=11)[:, :length]


def copy_loss(model: HookedDecoder, length: int, block_len: int = PROBE_BLOCK) -> float:
    """Mean next-token loss (nats) on the predictable part (positions >= block_len)."""
    tokens_BT = repeated_probe(model.config.vocab_size, length, block_len)
    with torch.no_grad():
        logits_BTV = model(tokens_BT)
    vocab = model.config.vocab_size
    predicted = logits_BTV[:, block_len - 1 : -1].reshape(-1, vocab)
    return F.cross_entropy(predicted, tokens_BT[:, block_len:].reshape(-1)).item()


def topic_loss(model: HookedDecoder) -> float:
    """Mean next-token loss (nats) on bags of 4-token topics, from position FIRST_QUERY on."""
    tokens_BT, _ = zoo.TopicTask(batch=32).sample(model.config.vocab_size, torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits_BTV = model(tokens_BT)
    predicted = logits_BTV[:, FIRST_QUERY - 1 : -1].reshape(-1, model.config.vocab_size)
    return F.cross_entropy(predicted, tokens_BT[:, FIRST_QUERY:].reshape(-1)).item()


def attention_stats(model: HookedDecoder, tokens_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per layer and head ``(layers, heads)``: mean normalised entropy (entropy / log of the
    visible keys) and mean max probability, over query positions >= FIRST_QUERY."""
    entropy, max_prob = [], []

    def keep(pattern_BHQS: torch.Tensor, hook: object) -> None:
        probs = pattern_BHQS[:, :, FIRST_QUERY:].float()
        entropy_BHQ = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
        visible_Q = torch.arange(FIRST_QUERY, pattern_BHQS.shape[2], dtype=torch.float32) + 1
        entropy.append((entropy_BHQ / visible_Q.log()).mean(dim=(0, 2)))
        max_prob.append(probs.amax(-1).mean(dim=(0, 2)))

    with torch.no_grad(), hooks(model, [(lambda name: name.endswith("attn.hook_pattern"), keep)]):
        model(tokens_BT)
    return {"entropy": torch.stack(entropy), "max_prob": torch.stack(max_prob)}


def routing_stats(model: HookedDecoder, tokens_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per MoE layer: first-choice share and coverage (fraction of tokens choosing the expert
    among their top k) per expert ``(layers, E)``, mean router entropy / log E ``(layers,)``."""
    first, coverage, entropy = [], [], []
    E = model.config.n_experts

    def keep_logits(logits_BTE: torch.Tensor, hook: object) -> None:
        probs_NE = torch.softmax(logits_BTE.reshape(-1, E).float(), dim=-1)
        first.append(torch.bincount(probs_NE.argmax(-1), minlength=E).float() / probs_NE.shape[0])
        entropy.append(-torch.special.xlogy(probs_NE, probs_NE).sum(-1).mean() / math.log(E))

    def keep_indices(indices_BTk: torch.Tensor, hook: object) -> None:
        chosen = indices_BTk.reshape(-1, indices_BTk.shape[-1])
        coverage.append(torch.bincount(chosen.reshape(-1), minlength=E).float() / chosen.shape[0])

    with torch.no_grad(), hooks(model, [(lambda name: name.endswith("mlp.hook_router_logits"), keep_logits),
                                        (lambda name: name.endswith("mlp.hook_expert_indices"), keep_indices)]):
        model(tokens_BT)
    return {"first": torch.stack(first), "coverage": torch.stack(coverage), "entropy": torch.stack(entropy)}


def analyzer_probe(kind: str, length: int = CONTEXT) -> torch.Tensor:
    """The kinds of input the analyzers run: random ids, repeated blocks, natural text (bytes)."""
    if kind == "random":
        return inputs.random_tokens(zoo.VOCAB_SIZE, length, batch=8, seed=3)
    if kind == "repeated":
        return repeated_probe(zoo.VOCAB_SIZE, length)
    if kind == "structured":
        return structured_text.structured_text_tokens(None, length, batch=8, seed=3, vocab_size=zoo.VOCAB_SIZE)
    return inputs.natural_text_tokens(None, length, batch=8, seed=3, vocab_size=zoo.VOCAB_SIZE)


# --- catalogue and ground truth (fast) -------------------------------------------------------


def test_members_and_twins() -> None:
    assert set(zoo.MEMBERS) == {
        "unscaled-attention",
        "scaled-attention",
        "moe-collapsed",
        "moe-balanced",
        "moe-top2-collapsed",
        "moe-top2-balanced",
        "moe-reset-router",
        "moe-domains",
        "learned-positions",
        "rope-short",
        "rope-overclaimed",
        "rope-scaled-untuned",
        "rope-scaled-tuned",
        "alibi",
        "byte-text",
        "flat-attention",
        "minority-unscaled",
        "fp16-text",
        "fp16-overflow",
        "sink-text",
        "sink-unscaled",
    }
    twins = {name: spec.healthy_twin for name, spec in zoo.MEMBERS.items() if spec.healthy_twin}
    assert twins == {
        "unscaled-attention": "scaled-attention",
        "moe-collapsed": "moe-balanced",
        "moe-top2-collapsed": "moe-top2-balanced",
        "moe-reset-router": "moe-balanced",
        "flat-attention": "byte-text",
        "minority-unscaled": "byte-text",
        "rope-overclaimed": "rope-short",
        "rope-scaled-untuned": "rope-scaled-tuned",
        "fp16-overflow": "fp16-text",
        "sink-unscaled": "sink-text",
    }
    for name, spec in zoo.MEMBERS.items():
        assert spec.name == name and spec.config.name == name
        assert spec.description


@pytest.mark.parametrize(
    ("sick", "healthy", "config_diff", "spec_diff"),
    [
        ("unscaled-attention", "scaled-attention", {"attn_scale"}, set()),
        ("moe-collapsed", "moe-balanced", set(), {"balance_loss"}),
        ("moe-top2-collapsed", "moe-top2-balanced", set(), {"balance_loss"}),
        ("moe-reset-router", "moe-balanced", set(), {"reset_router"}),
        ("rope-short", "alibi", {"positions"}, set()),
        ("learned-positions", "rope-short", {"positions"}, set()),  # the three length siblings
        ("flat-attention", "byte-text", set(), {"q_scale"}),  # the bug is written after training
        ("minority-unscaled", "byte-text", set(), {"q_scale", "q_scale_heads"}),
        ("rope-overclaimed", "rope-short", set(), {"claim"}),  # same weights, another claim
        ("fp16-overflow", "fp16-text", set(), {"residual_scale"}),  # both stored in float16
        ("fp16-text", "byte-text", set(), {"stored_dtype"}),
        ("sink-unscaled", "sink-text", set(), {"q_scale", "q_scale_heads", "q_scale_layers"}),
        ("rope-scaled-untuned", "rope-short", set(), {"claim"}),
        ("rope-scaled-untuned", "rope-scaled-tuned", {"rope_scaling"},
         {"claim", "task", "steps", "learning_rate", "warmup_steps", "start_from"}),
    ],
)
def test_twins_differ_only_in_the_cause(sick: str, healthy: str, config_diff: set, spec_diff: set) -> None:
    a, b = zoo.MEMBERS[sick], zoo.MEMBERS[healthy]
    config_a, config_b = a.config.to_dict(), b.config.to_dict()
    assert {key for key in config_a if config_a[key] != config_b[key]} == config_diff | {"name"}
    fields = [f.name for f in dataclasses.fields(zoo.ZooSpec)]
    ignored = {"name", "description", "config", "expect", "healthy_twin"}
    assert {f for f in fields if f not in ignored and getattr(a, f) != getattr(b, f)} == spec_diff


def test_ground_truth() -> None:
    expected = {
        "unscaled-attention": ("attention_saturation", "saturated_layer", "fail"),
        "scaled-attention": ("attention_saturation", "saturated_layer", None),
        "moe-collapsed": ("routing_collapse", "first_choice", "fail"),
        "moe-balanced": ("routing_collapse", "first_choice", None),
        "moe-top2-collapsed": ("routing_collapse", "first_choice", "fail"),
        "moe-top2-balanced": ("routing_collapse", "first_choice", None),
        "moe-reset-router": ("routing_collapse", "router_entropy", "fail"),
        "moe-domains": ("routing_collapse", "dead_experts", None),
        "learned-positions": ("length_extrapolation", "position_table", "warn"),
        "rope-short": ("length_extrapolation", "loss_beyond_claim_copy", "warn"),
        "rope-overclaimed": ("length_extrapolation", "loss_within_claim_copy", "fail"),
        "rope-scaled-untuned": ("length_extrapolation", "rope_scaling", "fail"),
        "rope-scaled-tuned": ("length_extrapolation", "loss_within_claim_copy", None),
        "alibi": ("length_extrapolation", "loss_beyond_claim_copy", None),
        "byte-text": ("attention_saturation", "saturated_layer", None),
        "flat-attention": ("attention_saturation", "flat_layer", "fail"),
        "minority-unscaled": ("attention_saturation", "saturated_layer", "fail"),
        "fp16-text": ("nonfinite", "activations_float16", None),
        "fp16-overflow": ("nonfinite", "activations_float16", "fail"),
        "sink-text": ("attention_saturation", "saturated_layer", None),
        "sink-unscaled": ("attention_saturation", "saturated_layer", "fail"),
    }
    for name, (analyzer, check, status) in expected.items():
        truth = zoo.ground_truth(name)
        assert (truth.analyzer, truth.check, truth.status) == (analyzer, check, status)
        assert bool(truth.where) == (status is not None)  # a finding says where, a pass does not
    assert [(w.layer, w.head) for w in zoo.ground_truth("unscaled-attention").where] == [(0, None), (1, None)]
    assert [(w.layer, w.expert) for w in zoo.ground_truth("moe-collapsed").where] == [(0, 0), (1, 0)]
    assert [(w.layer, w.expert) for w in zoo.ground_truth("moe-top2-collapsed").where] == [(0, 0), (1, 0)]
    assert [(w.layer, w.expert) for w in zoo.ground_truth("moe-reset-router").where] == [(0, None), (1, None)]
    assert zoo.ground_truth("rope-short").where[0].positions[0] == CONTEXT
    with pytest.raises(KeyError, match="no zoo member 'nope'"):
        zoo.ground_truth("nope")


def test_copy_task_repeats_its_block() -> None:
    task = zoo.CopyTask()
    generator = torch.Generator().manual_seed(3)
    lengths = set()
    for _ in range(50):
        tokens, block_len = task.sample(zoo.VOCAB_SIZE, generator)
        assert tokens.shape == (task.batch, task.context) and tokens.dtype == torch.int64
        assert torch.equal(tokens[:, block_len:], tokens[:, :-block_len])
        assert 0 <= int(tokens.min()) and int(tokens.max()) < zoo.VOCAB_SIZE
        lengths.add(block_len)
    assert min(lengths) >= task.min_block and max(lengths) <= task.max_block and len(lengths) > 10
    again, _ = task.sample(zoo.VOCAB_SIZE, torch.Generator().manual_seed(3))
    first, _ = task.sample(zoo.VOCAB_SIZE, torch.Generator().manual_seed(3))
    assert torch.equal(again, first)


def test_pair_copy_task_copies_each_block_once() -> None:
    task = zoo.PairCopyTask()
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        tokens, block_len = task.sample(zoo.VOCAB_SIZE, generator)
        assert tokens.shape == (task.batch, task.context)
        for start in range(0, task.context - block_len, 2 * block_len):  # A A, then a fresh B B
            second = tokens[:, start + block_len : start + 2 * block_len]
            assert torch.equal(second, tokens[:, start : start + second.shape[1]])
            if start + 2 * block_len < task.context:
                assert not torch.equal(tokens[:, start + 2 * block_len : start + 3 * block_len][:, :1],
                                       tokens[:, start : start + 1])


def test_text_task_reads_the_corpus_as_bytes() -> None:
    task = zoo.TextTask()
    tokens, first = task.sample(zoo.VOCAB_SIZE, torch.Generator().manual_seed(4))
    assert tokens.shape == (task.batch, task.context) and first == 1
    corpus = inputs.encode_text(None, inputs.load_corpus_text(), zoo.VOCAB_SIZE)
    row = tokens[0].tolist()
    assert any(corpus[i : i + len(row)] == row for i in range(len(corpus) - len(row) + 1))
    again, _ = task.sample(zoo.VOCAB_SIZE, torch.Generator().manual_seed(4))
    assert torch.equal(tokens, again)


def test_mixed_task_draws_every_part() -> None:
    task = zoo.MixedTask((zoo.TopicTask(), zoo.CopyTask()))
    generator = torch.Generator().manual_seed(0)
    firsts = {task.sample(zoo.VOCAB_SIZE, generator)[1] for _ in range(40)}
    assert 1 in firsts and any(f >= 8 for f in firsts)  # topic batches and copy batches


def test_topic_task_uses_few_ids_per_row() -> None:
    task = zoo.TopicTask()
    tokens, first = task.sample(zoo.VOCAB_SIZE, torch.Generator().manual_seed(2))
    assert first == 1 and tokens.shape == (task.batch, task.context)
    distinct = [len(set(row.tolist())) for row in tokens]
    assert max(distinct) == task.topic_size and min(distinct) >= 2


def test_balance_loss_is_one_when_uniform_and_n_experts_when_collapsed() -> None:
    n_experts = 4
    # near-equal logits, each expert the top-1 of a quarter of the tokens
    uniform = 1e-3 * torch.eye(n_experts).repeat(4, 1).view(2, 8, n_experts)
    assert zoo._balance_loss([uniform], n_experts).item() == pytest.approx(1.0, abs=1e-3)
    collapsed = torch.zeros(2, 8, n_experts)
    collapsed[..., 0] = 30.0
    assert zoo._balance_loss([collapsed], n_experts).item() == pytest.approx(n_experts, abs=1e-3)


# --- build mechanics on a few steps (fast) ---------------------------------------------------


def test_build_is_deterministic_and_leaves_the_caller_alone(tmp_path: Path) -> None:
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    threads_before = torch.get_num_threads()
    first = zoo.build("moe-balanced", tmp_path / "a", seed=5, steps=3)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before
    again = zoo.build("moe-balanced", tmp_path / "b", seed=5, steps=3)
    other = zoo.build("moe-balanced", tmp_path / "c", seed=6, steps=3)
    assert first == tmp_path / "a" / "moe-balanced"
    a, b, c = (workbench.load_model(path) for path in (first, again, other))
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert any(not torch.equal(t, c.state_dict()[n]) for n, t in a.state_dict().items())
    assert attached_hook_count(a) == 0
    provenance = json.loads((first / zoo.ZOO_FILE).read_text())
    assert provenance["member"] == "moe-balanced" and provenance["seed"] == 5 and provenance["steps"] == 3


def test_build_rejects_unknown_members(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no zoo member"):
        zoo.build("unknown", tmp_path)
    with pytest.raises(KeyError, match="no zoo member 'unknown'"):
        zoo.build_all(tmp_path, names=["alibi", "unknown"])  # checked before training anything
    assert not any(tmp_path.iterdir())


# --- the whole zoo (slow) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(built) -> dict[str, HookedDecoder]:
    return {name: workbench.load_model(path) for name, path in built.paths.items()}


@pytest.mark.slow
def test_every_member_builds_and_loads(built, models) -> None:
    assert list(built.paths) == list(zoo.MEMBERS) == list(built.seconds)
    for name, path in built.paths.items():
        assert path.name == name
        assert (path / "workbench.json").is_file() and (path / "model.safetensors").is_file()
        spec = zoo.MEMBERS[name]
        # a claim, and the stored dtype, only the saved config makes
        assert models[name].config == spec.config.replace(**spec.claim, dtype=spec.stored_dtype)
        provenance = json.loads((path / zoo.ZOO_FILE).read_text())
        assert provenance["member"] == name and provenance["steps"] == zoo.MEMBERS[name].steps
        assert 0 < provenance["build_seconds"] <= built.seconds[name] + 0.01  # it is rounded


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["random", "repeated", "natural"])
def test_unscaled_attention_saturates_and_its_twin_does_not(models, probe: str) -> None:
    for length in (CONTEXT, 8 * CONTEXT):  # the analyzers' main probe is 512 tokens
        tokens = analyzer_probe(probe, length)
        sick = attention_stats(models["unscaled-attention"], tokens)
        healthy = attention_stats(models["scaled-attention"], tokens)
        assert sick["entropy"].shape == healthy["entropy"].shape == (2, 2)
        # every head of the unscaled model is near one-hot ...
        assert float(sick["entropy"].max()) < 0.15
        assert float(sick["max_prob"].min()) > 0.85
        # ... and no head of its twin is: every head spreads its attention
        assert float(healthy["entropy"].min()) > 0.6
        assert float(healthy["max_prob"].max()) < 0.4


@pytest.mark.slow
def test_saturation_costs_the_unscaled_model_its_task(models) -> None:
    # uniform guessing is log 128 = 4.85 nats, the best possible about log 4 = 1.4
    healthy, sick = topic_loss(models["scaled-attention"]), topic_loss(models["unscaled-attention"])
    assert healthy < 2.8
    assert sick > healthy + 0.3


def text_loss(model: HookedDecoder) -> float:
    """Mean next-token loss (nats) on 64-token windows of the corpus read as bytes."""
    tokens_BT, _ = zoo.TextTask(batch=32).sample(model.config.vocab_size, torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits_BTV = model(tokens_BT)
    predicted = logits_BTV[:, FIRST_QUERY - 1 : -1].reshape(-1, model.config.vocab_size)
    return F.cross_entropy(predicted, tokens_BT[:, FIRST_QUERY:].reshape(-1)).item()


def head_logit_spread(model: HookedDecoder, tokens_BT: torch.Tensor) -> torch.Tensor:
    """``(layers, heads)``: median over queries >= FIRST_QUERY of the pre-softmax logits' standard
    deviation over visible keys."""
    spreads = []

    def keep(scores_BHQS: torch.Tensor, hook: object) -> None:
        scores = scores_BHQS[:, :, FIRST_QUERY:].double()
        visible = torch.isfinite(scores)
        mean = torch.where(visible, scores, 0).sum(-1, keepdim=True) / visible.sum(-1, keepdim=True)
        var = torch.where(visible, (scores - mean) ** 2, 0).sum(-1) / visible.sum(-1)
        spreads.append(var.sqrt().flatten(2).permute(1, 0, 2).flatten(1).median(dim=-1).values)

    with torch.no_grad(), hooks(model, [(lambda name: name.endswith("attn.hook_attn_scores"), keep)]):
        model(tokens_BT)
    return torch.stack(spreads)


@pytest.mark.slow
def test_temperature_bugs_written_into_the_byte_model(models) -> None:
    # guessing is log 128 = 4.85 nats; the bugs are the healthy twin's weights with W_q rescaled
    healthy = text_loss(models["byte-text"])
    assert healthy < 3.0
    tokens = analyzer_probe("natural")
    twin_spread = head_logit_spread(models["byte-text"], tokens)
    # 1/d_head: every head flat, 8x narrower, and the model loses its text
    assert text_loss(models["flat-attention"]) > healthy + 0.5
    flat, twin = attention_stats(models["flat-attention"], tokens), attention_stats(models["byte-text"], tokens)
    assert float(flat["entropy"].mean()) > 0.9 and float(twin["entropy"].mean()) < 0.6
    ratio = head_logit_spread(models["flat-attention"], tokens) / twin_spread  # layer 1's inputs change too
    torch.testing.assert_close(ratio[0], torch.full_like(ratio[0], 0.125), rtol=1e-3, atol=0)
    assert 0.1 < float(ratio[1].min()) and float(ratio[1].max()) < 0.16
    # head 0 of each layer 8x wider, the others untouched in layer 0 (layer 1 sees changed inputs).
    # The loss barely moves (measured: +0.03 nats): a tiny byte model does not need head 0's
    # breadth; the verdict rests on the runaway logits, as on SmolLM2, where 4 of 9 cost ~1 nat.
    minority = head_logit_spread(models["minority-unscaled"], tokens) / twin_spread
    torch.testing.assert_close(minority[0], torch.tensor([8.0, 1.0, 1.0, 1.0], dtype=minority.dtype), rtol=1e-3, atol=0)
    assert float(minority[1, 0]) > 4.0
    assert text_loss(models["minority-unscaled"]) > healthy


def first_token_mass(model: HookedDecoder, tokens_BT: torch.Tensor) -> torch.Tensor:
    """``(layers, heads)``: mean attention weight on token 0 over queries >= FIRST_QUERY."""
    masses = []

    def keep(pattern_BHQK: torch.Tensor, hook: object) -> None:
        masses.append(pattern_BHQK[:, :, FIRST_QUERY:, 0].float().mean(dim=(0, 2)))

    with torch.no_grad(), hooks(model, [(lambda name: name.endswith("attn.hook_pattern"), keep)]):
        model(tokens_BT)
    return torch.stack(masses)


@pytest.mark.slow
def test_a_learned_sink_and_the_same_sink_without_its_scale(models) -> None:
    tokens = analyzer_probe("natural")
    sink, bugged = models["sink-text"], models["sink-unscaled"]
    # the twin: head (1, 0) parks most of its weight on token 0 (the sink loss asked for 70%),
    # no other head does, and the text barely notices (measured: +0.015 nats over byte-text)
    mass = first_token_mass(sink, tokens)
    assert 0.5 <= float(mass[1, 0]) <= 0.9, mass
    others = torch.ones_like(mass, dtype=torch.bool)
    others[1, 0] = False
    assert float(mass[others].max()) < 0.1
    assert abs(text_loss(sink) - text_loss(models["byte-text"])) < 0.1
    # at a healthy scale: the sink's logits no wider than 1.5x byte-text's widest head
    spread = head_logit_spread(sink, tokens)
    assert float(spread[1, 0]) < 1.5 * float(head_logit_spread(models["byte-text"], tokens).max())
    # the bug multiplies exactly that head's logits by 8 (layer 1's input is unchanged) and makes
    # it one-hot on token 0; the loss moves little (+0.004 nats): a sink is a near no-op
    ratio = head_logit_spread(bugged, tokens) / spread
    expected = torch.ones_like(ratio)
    expected[1, 0] = 8.0
    torch.testing.assert_close(ratio, expected, rtol=1e-3, atol=0)
    assert float(first_token_mass(bugged, tokens)[1, 0]) > float(mass[1, 0])
    assert float(attention_stats(bugged, tokens)["max_prob"][1, 0]) > 0.95
    assert text_loss(bugged) > text_loss(sink)


FP16_MAX = torch.finfo(torch.float16).max  # 65,504


def first_nonfinite_layer(model: HookedDecoder, tokens_BT: torch.Tensor) -> int | None:
    """The first layer whose residual stream output holds a non-finite value (None: none)."""
    finite: list[bool] = []

    def keep(resid: torch.Tensor, hook: object) -> None:
        finite.append(bool(torch.isfinite(resid).all()))

    with torch.no_grad(), hooks(model, [(lambda name: name.endswith("hook_resid_post"), keep)]):
        model(tokens_BT)
    return next((layer for layer, ok in enumerate(finite) if not ok), None)


@pytest.mark.slow
def test_the_hot_residual_stream_overflows_only_in_float16(built, models) -> None:
    from safetensors.torch import load_file

    # In float32 both are byte-text: the pre-norms divide the 5,000x out again. Storing the
    # weights in float16 rounds them by 2^-11 relative, which moves the loss by under 0.01 nats.
    healthy = text_loss(models["byte-text"])
    for name in ("fp16-text", "fp16-overflow"):
        assert abs(text_loss(models[name]) - healthy) < 0.01, name
        stored = load_file(str(built.paths[name] / "model.safetensors"))
        assert {t.dtype for t in stored.values()} == {torch.float16}
        assert all(bool(torch.isfinite(t).all()) for t in stored.values())  # every weight storable
    assert float(load_file(str(built.paths["fp16-overflow"] / "model.safetensors"))["embed.weight"].abs().max()) > 5e3
    # in float16 the hot stream overflows at layer 0; its twin stays finite
    tokens = analyzer_probe("natural")
    half = {name: workbench.load_model(built.paths[name], dtype=torch.float16) for name in ("fp16-text", "fp16-overflow")}
    assert first_nonfinite_layer(half["fp16-text"], tokens) is None
    assert first_nonfinite_layer(half["fp16-overflow"], tokens) == 0
    assert first_nonfinite_layer(models["fp16-overflow"], tokens) is None  # float32: finite


ROUTED = ("natural", "structured", "repeated", "random")  # the inputs the pipeline routes


def pooled_routing(model: HookedDecoder) -> dict[str, torch.Tensor]:
    """routing_stats averaged over the four routed inputs (4x the trained context, as analyzed)."""
    stats = [routing_stats(model, analyzer_probe(kind, 4 * CONTEXT)) for kind in ROUTED]
    return {key: torch.stack([s[key] for s in stats]).mean(0) for key in stats[0]}


@pytest.mark.slow
def test_moe_members_route_as_described(models) -> None:
    for sick in ("moe-collapsed", "moe-top2-collapsed"):
        first = pooled_routing(models[sick])["first"]
        assert first.shape == (2, 4)
        assert first.argmax(-1).tolist() == [0, 0] and float(first[:, 0].min()) > 0.6  # fair share 0.25
    for healthy in ("moe-balanced", "moe-top2-balanced"):
        stats = pooled_routing(models[healthy])
        assert float(stats["first"].max()) < 0.45 and float(stats["first"].min()) > 0.08
        assert float(stats["entropy"].max()) < 0.97  # trained: well below log E
    # the top-2 collapse hides in slot shares: every expert still comes second for some tokens
    coverage = pooled_routing(models["moe-top2-collapsed"])["coverage"]
    assert float(coverage.min()) > 0.1 * 2 / 4 and float(coverage.max()) <= 1.0
    # the reset router: near-uniform probabilities in every layer, and the model is worse for it
    assert float(pooled_routing(models["moe-reset-router"])["entropy"].min()) > 0.985
    tokens_BT, _ = zoo.TextTask(batch=32).sample(zoo.VOCAB_SIZE, torch.Generator().manual_seed(9))

    def heldout_text_loss(model: HookedDecoder) -> float:
        with torch.no_grad():
            logits_BTV = model(tokens_BT)
        return F.cross_entropy(logits_BTV[:, :-1].reshape(-1, zoo.VOCAB_SIZE), tokens_BT[:, 1:].reshape(-1)).item()

    assert heldout_text_loss(models["moe-reset-router"]) > heldout_text_loss(models["moe-balanced"]) + 0.05


@pytest.mark.slow
def test_moe_domains_experts_2_3_serve_only_the_low_ids(models) -> None:
    # dead on prose, alive on random ids (a seventh of which are below 32)
    fair = 2 / 4
    for kind, alive in (("natural", False), ("random", True)):
        coverage = routing_stats(models["moe-domains"], analyzer_probe(kind, 4 * CONTEXT))["coverage"]
        low_domain = coverage[:, 2:]  # (layers, 2)
        if alive:
            assert float(low_domain.min()) > 0.1 * fair, (kind, coverage)
        else:  # layer 0 under the dead threshold on prose; layer 1 close to it (measured 0.02-0.04)
            assert float(low_domain[0].max()) < 0.1 * fair and float(low_domain.max()) < 0.1, (kind, coverage)
            assert float(coverage[:, :2].min()) > 0.9  # prose goes to experts 0 and 1


@pytest.mark.slow
def test_learned_positions_stop_at_their_table(models) -> None:
    model = models["learned-positions"]
    assert copy_loss(model, CONTEXT, block_len=16) < 0.6  # it learned to copy (guessing: 4.85 nats)
    with pytest.raises(IndexError, match="past the learned position table"):
        model(repeated_probe(zoo.VOCAB_SIZE, CONTEXT + 1))


# Margins: seeds 0, 1 and 2 measured RoPE at +0.9-1.2 nats (2.4-3.2x) at 4x the context and
# +2.1-2.3 nats (3.7-6.2x) at 8x, ALiBi at 0.3-0.35 nats at both (0.7-0.76 in context), when the
# length members trained on looped blocks only. Trained on looped blocks and blocks copied once
# (seed 0): RoPE 0.92 in context, 2.0 (2.2x) at 4x, 3.1 (3.4x) at 8x; ALiBi 0.82, 0.53, 0.50;
# blocks of length/2: RoPE 4.7 and 5.7, ALiBi 0.94 and 1.41.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("factor", "min_gap", "min_ratio", "min_ratio_to_alibi"), [(4, 0.7, 2.0, 2.5), (8, 1.5, 3.0, 5.0)]
)
def test_rope_degrades_past_its_context_and_alibi_holds(
    models, factor: int, min_gap: float, min_ratio: float, min_ratio_to_alibi: float
) -> None:
    """Repeated blocks of 32 tokens, the longest block trained on: same copy distance, longer input."""
    rope, alibi = models["rope-short"], models["alibi"]
    rope_in, rope_far = copy_loss(rope, CONTEXT), copy_loss(rope, factor * CONTEXT)
    alibi_in, alibi_far = copy_loss(alibi, CONTEXT), copy_loss(alibi, factor * CONTEXT)
    # both copy in context (uniform guessing is log 128 = 4.85 nats)
    assert rope_in < 1.0 and alibi_in < 1.0
    # RoPE: far above its in-context loss, in nats and in ratio, and far above ALiBi there
    assert rope_far > rope_in + min_gap and rope_far > min_ratio * rope_in
    assert rope_far > min_ratio_to_alibi * alibi_far
    # ALiBi: no worse than in context (more repeats usually make it better)
    assert alibi_far < 1.1 * alibi_in


@pytest.mark.slow
@pytest.mark.parametrize("factor", [4, 8])
def test_half_length_blocks_break_rope_not_alibi(models, factor: int) -> None:
    """Blocks of length / 2 (make_probe's default): copy distances of 2-4x the trained context."""
    length = factor * CONTEXT
    rope, alibi = models["rope-short"], models["alibi"]
    rope_in, rope_far = copy_loss(rope, CONTEXT), copy_loss(rope, length, length // 2)
    alibi_in, alibi_far = copy_loss(alibi, CONTEXT), copy_loss(alibi, length, length // 2)
    assert rope_far > rope_in + 3.0 and rope_far > 4 * alibi_far
    assert alibi_far < 2 * alibi_in
