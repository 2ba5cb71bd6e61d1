"""length_extrapolation on models it was not written against, with ground truth from transformers.

A tiny Llama is trained *with transformers* (not the workbench's decoder, not the zoo's loop) to
copy at a 64-token context, saved as a Hugging Face folder, and given configs that claim other
contexts: its own 64 (honest), 8x that (an overclaimed context), and 4x through linear RoPE
scaling it was never fine-tuned for. For each, transformers measures the loss on the
workbench's own copy probe inside the test; the workbench must then give the verdict the issue's
rules give for that measurement (fail inside the claim, warn past it, skip at chance), at the
position transformers shows, within one window.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from workbench.inputs import repeated_random_blocks
from workbench.measurements.copy_probe import copied_random_blocks, copy_targets
from workbench.pipeline.run import RunOptions, run

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")

VOCAB, TRAINED = 128, 64
SEEDS = (0, 1, 2)  # the default profile's length seeds (run seed 0)


def llama_config(**changes) -> transformers.LlamaConfig:
    sizes = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, head_dim=32, max_position_embeddings=TRAINED,
                 tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return transformers.LlamaConfig(**{**sizes, **changes})


def batch(step: int, context: int, rows: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy training data: even steps one block repeated, odd steps blocks copied once (as the
    probe writes them); labels are -100 where nothing can be copied yet."""
    block = 8 + (step * 7) % 25  # 8..32, no fixed distance pays off
    if step % 2 == 0:
        tokens = repeated_random_blocks(VOCAB, block, -(-context // block), batch=rows, seed=step, low=0)[:, :context]
        target = torch.arange(context) >= block
    else:
        tokens = copied_random_blocks(VOCAB, block, context, batch=rows, seed=step, low=0)
        target = torch.cat([torch.tensor([False]), copy_targets(context, block)])
    labels = torch.where(target, tokens, torch.full_like(tokens, -100))
    return tokens, labels


def fresh_llama(**changes) -> transformers.LlamaForCausalLM:
    """A new tiny Llama with torch's default init (transformers' 0.02 normal learns the copy
    task far more slowly at this size)."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(llama_config(**changes))
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            module.reset_parameters()
    return model


def train(model, steps: int, context: int, lr: float = 6e-3, first_step: int = 0) -> float:
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(math.nan)
    for step in range(steps):
        tokens, labels = batch(first_step + step, context)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = model(input_ids=tokens, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def save(model, folder: Path, **config_changes) -> Path:
    """The model as a Hugging Face folder whose config.json claims what ``config_changes`` say."""
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@torch.no_grad()
def transformers_copy_levels(folder: Path, claim: int, length: int, window: int) -> list[float]:
    """Transformers' mean loss per window on the workbench's copy probe (random ids, copy
    distance min(32, claim / 8), seeds 0-2), over the predictable targets."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    distance = max(2, min(32, claim // 4))
    predictable = copy_targets(length, distance)
    levels = torch.zeros(-(-length // window))
    for seed in SEEDS:
        tokens = copied_random_blocks(VOCAB, distance, length, seed=seed)
        logits = model(input_ids=tokens).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, tokens[0, 1:], reduction="none")
        for index, start in enumerate(range(0, length, window)):
            part = slice(max(0, start - 1), start + window - 1)
            levels[index] += loss[part][predictable[part]].mean() / len(SEEDS)
    return levels.tolist()


def leaves_for_good(levels: list[float], window: int, trained: int, margin: float = 0.5) -> int | None:
    """Where transformers' curve leaves its best level within the trained context for good."""
    best = min(range(max(1, trained // window)), key=lambda i: levels[i])
    for i in range(best + 1, len(levels)):
        if all(level > levels[best] + margin for level in levels[i:]):
            return i * window
    return None


def verdicts(folder: Path, profile: str = "default", tokens: int | None = None) -> dict[str, dict]:
    report = run(str(folder), RunOptions(command="extrapolation", profile=profile, tokens=tokens)).report
    return {f["check"]: f for f in report["findings"] if f["analyzer"] == "length_extrapolation"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[object, Path]:
    model = fresh_llama()
    final = train(model, steps=600, context=TRAINED)
    assert final < 1.5, f"the copy model did not learn (last batch loss {final:.2f})"
    return model, tmp_path_factory.mktemp("llama")


def test_an_overclaimed_context_fails_inside_the_claim_where_transformers_sees_it(trained):
    model, root = trained
    folder = save(model, root / "overclaimed", max_position_embeddings=8 * TRAINED)
    claim, window = 8 * TRAINED, 8 * TRAINED // 8
    levels = transformers_copy_levels(folder, claim, 2 * claim, window)
    measured = leaves_for_good(levels, window, claim)
    assert measured is not None and measured < claim, levels  # ground truth: it breaks its claim
    found = verdicts(folder)
    fail = found["loss_within_claim_copy"]
    assert fail["status"] == "fail", fail["message"]
    assert abs(fail["details"]["effective_context"] - measured) <= window, (fail["details"], levels)


def test_the_honest_claim_gets_the_verdict_transformers_measures(trained, tmp_path):
    model, root = trained
    folder = save(model, root / "honest")
    window = 32  # the analyzer's minimum window; the claim's eighth is smaller
    levels = transformers_copy_levels(folder, TRAINED, 8 * TRAINED, window)
    measured = leaves_for_good(levels, window, TRAINED)
    assert min(levels[:2]) < 0.5 * math.log(VOCAB), levels  # ground truth: it copies in its context
    found = verdicts(folder, tokens=8 * TRAINED)
    if measured is not None and measured < TRAINED:  # transformers: it does not hold its own claim
        assert found["loss_within_claim_copy"]["status"] == "fail", levels
        return
    assert found["loss_within_claim_copy"]["status"] == "pass", (found["loss_within_claim_copy"], levels)
    beyond = found["loss_beyond_claim_copy"]
    if measured is None:
        assert beyond["status"] == "pass", (beyond, levels)
        return
    assert beyond["status"] == "warn" and beyond["details"]["effective_context"] >= TRAINED
    assert abs(beyond["details"]["effective_context"] - measured) <= window, (beyond["details"], levels)
    long = verdicts(folder, profile="long", tokens=8 * TRAINED)
    assert long["loss_beyond_claim_copy"]["status"] == "fail"


def test_rope_scaling_never_fine_tuned_fails_and_names_both_losses(trained):
    model, root = trained
    # Qwen2.5's way of writing it: max_position_embeddings is the original, the factor stretches it
    scaling = {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": TRAINED,
               "rope_theta": model.config.rope_parameters["rope_theta"]}
    folder = save(model, root / "scaled", rope_parameters=scaling)
    plain = save(model, root / "plain")
    window = 32
    with_scaling = transformers_copy_levels(folder, 4 * TRAINED, TRAINED, window)
    without = transformers_copy_levels(plain, 4 * TRAINED, TRAINED, window)
    assert with_scaling[1] - without[1] > 1.0, (with_scaling, without)  # ground truth: the scaling breaks it
    found = verdicts(folder)
    fail = found["rope_scaling"]
    assert fail["status"] == "fail", fail["message"]
    assert fail["details"]["loss_with_scaling"] == pytest.approx(with_scaling[1], abs=0.35)
    assert fail["details"]["loss_without_scaling"] == pytest.approx(without[1], abs=0.35)
    assert "chance" not in found


def test_random_weights_are_a_skip_not_a_length_fail(tmp_path):
    folder = save(fresh_llama(), tmp_path / "random",
                  rope_parameters={"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": TRAINED,
                                   "rope_theta": 10000.0})
    found = verdicts(folder)
    assert found["chance"]["status"] == "skip"
    assert [c for c, f in found.items() if f["status"] == "fail"] == []
