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
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import workbench
from workbench import inputs, zoo
from workbench.hooks import attached_hook_count, hooks
from workbench.model import HookedDecoder

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


def attention_stats(model: HookedDecoder) -> dict[str, torch.Tensor]:
    """Per layer and head: mean normalised entropy (entropy / log visible keys) and mean max
    probability over query positions >= FIRST_QUERY of an in-context copy probe."""
    entropy, max_prob = [], []

    def keep(pattern_BHQS: torch.Tensor, hook: object) -> None:
        probs = pattern_BHQS[:, :, FIRST_QUERY:].float()
        entropy_BHQ = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
        visible_Q = torch.arange(FIRST_QUERY, pattern_BHQS.shape[2], dtype=torch.float32) + 1
        entropy.append((entropy_BHQ / visible_Q.log()).mean(dim=(0, 2)))
        max_prob.append(probs.amax(-1).mean(dim=(0, 2)))

    tokens = repeated_probe(model.config.vocab_size, CONTEXT)
    with torch.no_grad(), hooks(model, [(lambda name: name.endswith("attn.hook_pattern"), keep)]):
        model(tokens)
    return {"entropy": torch.stack(entropy), "max_prob": torch.stack(max_prob)}  # (layers, heads)


def expert_shares(model: HookedDecoder) -> torch.Tensor:
    """Fraction of tokens whose top-1 expert is each expert, per MoE layer: (layers, E)."""
    shares = []

    def keep(indices_BTk: torch.Tensor, hook: object) -> None:
        top1 = indices_BTk[..., 0].reshape(-1)
        shares.append(torch.bincount(top1, minlength=model.config.n_experts).float() / top1.numel())

    tokens = repeated_probe(model.config.vocab_size, CONTEXT)
    with torch.no_grad(), hooks(model, [(lambda name: name.endswith("mlp.hook_expert_indices"), keep)]):
        model(tokens)
    return torch.stack(shares)


# --- catalogue and ground truth (fast) -------------------------------------------------------


def test_members_and_twins() -> None:
    assert set(zoo.MEMBERS) == {
        "unscaled-attention", "scaled-attention", "moe-collapsed", "moe-balanced",
        "learned-positions", "rope-short", "alibi",
    }
    twins = {name: spec.healthy_twin for name, spec in zoo.MEMBERS.items() if spec.healthy_twin}
    assert twins == {
        "unscaled-attention": "scaled-attention", "moe-collapsed": "moe-balanced", "rope-short": "alibi",
    }
    for name, spec in zoo.MEMBERS.items():
        assert spec.name == name and spec.config.name == name
        assert spec.description


@pytest.mark.parametrize(
    ("sick", "healthy", "config_diff", "spec_diff"),
    [
        ("unscaled-attention", "scaled-attention", {"attn_scale"}, set()),
        ("moe-collapsed", "moe-balanced", set(), {"balance_loss"}),
        ("rope-short", "alibi", {"positions"}, set()),
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
        "unscaled-attention": ("saturation", "fail"),
        "scaled-attention": ("saturation", None),
        "moe-collapsed": ("routing_collapse", "fail"),
        "moe-balanced": ("routing_collapse", None),
        "learned-positions": ("length_extrapolation", "fail"),
        "rope-short": ("length_extrapolation", "fail"),
        "alibi": ("length_extrapolation", None),
    }
    for name, (analyzer, status) in expected.items():
        truth = zoo.ground_truth(name)
        assert (truth.analyzer, truth.status) == (analyzer, status)
        assert bool(truth.where) == (status == "fail")  # a failure says where, a pass does not
    assert [w.expert for w in zoo.ground_truth("moe-collapsed").where] == [0, 0]
    assert zoo.ground_truth("rope-short").where[0].positions == (CONTEXT, 8 * CONTEXT)
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


def test_balance_loss_is_one_when_uniform_and_n_experts_when_collapsed() -> None:
    n_experts = 4
    uniform = torch.zeros(2, 8, n_experts)
    uniform[..., :] = torch.eye(n_experts).repeat(4, 1).view(2, 8, n_experts) * 1e-3  # ties broken evenly
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
    assert not any(tmp_path.iterdir())


# --- the whole zoo (slow) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, float]]:
    """Every member built once: name -> (checkpoint folder, build seconds)."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    paths = zoo.build_all(
        tmp_path_factory.mktemp("zoo"), progress=lambda name, path, secs: seconds.__setitem__(name, secs)
    )
    seconds["total"] = time.perf_counter() - start
    return {name: (path, seconds[name]) for name, path in paths.items()} | {"total": (Path(), seconds["total"])}


@pytest.fixture(scope="module")
def models(built: dict[str, tuple[Path, float]]) -> dict[str, HookedDecoder]:
    return {name: workbench.load_model(path) for name, (path, _) in built.items() if name != "total"}


@pytest.mark.slow
def test_every_member_builds_and_loads(built, models, record_property) -> None:
    assert set(models) == set(zoo.MEMBERS)
    for name, (path, seconds) in built.items():
        record_property(f"build_seconds[{name}]", round(seconds, 1))
        if name == "total":
            continue
        assert (path / "workbench.json").is_file() and (path / "model.safetensors").is_file()
        assert models[name].config == zoo.MEMBERS[name].config
        assert json.loads((path / zoo.ZOO_FILE).read_text())["member"] == name


@pytest.mark.slow
def test_unscaled_attention_saturates_and_its_twin_does_not(models) -> None:
    sick, healthy = attention_stats(models["unscaled-attention"]), attention_stats(models["scaled-attention"])
    # every head of the unscaled model is near one-hot
    assert float(sick["entropy"].max()) < 0.2
    assert float(sick["max_prob"].min()) > 0.85
    # the twin's heads are not: on average several times more spread, none near one-hot
    assert float(healthy["entropy"].mean()) > 0.3
    assert float(healthy["entropy"].mean()) > 4 * float(sick["entropy"].mean())
    assert float(healthy["max_prob"].max()) < 0.85
    # and the twin learned the task the unscaled model could not
    assert copy_loss(models["scaled-attention"], CONTEXT) < 1.0 < copy_loss(models["unscaled-attention"], CONTEXT)


@pytest.mark.slow
def test_moe_collapsed_sends_everything_to_expert_0_and_its_twin_balances(models) -> None:
    collapsed, balanced = expert_shares(models["moe-collapsed"]), expert_shares(models["moe-balanced"])
    assert collapsed.shape == balanced.shape == (2, 4)
    for layer_shares in collapsed:
        assert int(layer_shares.argmax()) == 0 and float(layer_shares[0]) > 0.8
        assert int((layer_shares < 0.01).sum()) >= 1  # at least one dead expert
    for layer_shares in balanced:
        assert float(layer_shares.max()) < 0.45
        assert float(layer_shares.min()) > 0.05  # no dead expert


@pytest.mark.slow
def test_learned_positions_stop_at_their_table(models) -> None:
    model = models["learned-positions"]
    assert copy_loss(model, CONTEXT) < 0.5 * math.log(zoo.VOCAB_SIZE)  # it learned to copy
    with pytest.raises(IndexError, match="past the learned position table"):
        model(repeated_probe(zoo.VOCAB_SIZE, CONTEXT + 1))


@pytest.mark.slow
@pytest.mark.parametrize("factor", [4, 8])
def test_rope_degrades_past_its_context_and_alibi_holds(models, factor: int) -> None:
    rope_in, rope_far = copy_loss(models["rope-short"], CONTEXT), copy_loss(models["rope-short"], factor * CONTEXT)
    alibi_in, alibi_far = copy_loss(models["alibi"], CONTEXT), copy_loss(models["alibi"], factor * CONTEXT)
    # both copy well in context (uniform guessing is log 128 = 4.85 nats)
    assert rope_in < 1.0 and alibi_in < 1.2
    # RoPE: several times its in-context loss, and at least 1.5 nats worse
    assert rope_far > 3 * rope_in and rope_far > rope_in + 1.5
    # ALiBi: within 30% of its in-context loss (it usually improves with more repeats)
    assert abs(alibi_far - alibi_in) < 0.3 * alibi_in
