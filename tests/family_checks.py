"""Shared checks for the families with a module each (tests/test_families_*.py).

The standard of tests/test_families.py: a tiny, randomly initialised fp32 transformers model is
saved with ``save_pretrained``, loaded by the real loader (``workbench.load_model``) and run on
a left-padded batch of varied lengths; logits at every real position must equal transformers'
on the SDPA path and on the explicit chunked path. Plus: the parameter count matches, every hook
point fires exactly once per forward and nothing stays attached, and incremental decoding with
the KV cache gives the logits of one full forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helpers
import pytest
import torch
from helpers import ROW_LENGTHS, SEQ_LEN, VOCAB, FamilyCase, padded_batch  # noqa: F401 - re-exported
from torch import nn

import workbench
from workbench.model.hooks import attached_hook_count

# Both sides run the same fp32 arithmetic in a different order (SDPA vs matmul, fused vs split
# projections, grouped vs repeated heads, per-expert loops, MLA's expanded keys). Over the 13
# cases of tests/test_families_*.py (|logits| <= 3.5) that moves logits by at most 2.2e-6
# (measured on both paths); 1e-5 two-sided leaves 4x headroom while every mechanism left out
# (a cap, a norm offset, the local RoPE, clip_qkv, the selection bias, the RoPE row order...)
# moves logits by 3e-2 or more (measured by switching each off).
ATOL = 1e-5
RTOL = 1e-5


@dataclass(frozen=True)
class Case(FamilyCase):
    """helpers.FamilyCase plus how to finish its reference model once its weights are drawn."""

    prepare: Callable[[nn.Module], None] | None = None  # e.g. fill a buffer init leaves at zero

    def hf_model(self, seed: int = 0) -> nn.Module:
        """A seeded fp32 transformers model, weights spread wider than its default init."""
        import transformers

        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(
            self.hf_config(), dtype=torch.float32, attn_implementation=self.attn_implementation
        )
        init_weights(model, seed=seed)
        if self.prepare is not None:
            self.prepare(model)
        return model.eval()


def init_weights(model: nn.Module, std: float = 0.15, seed: int = 0) -> nn.Module:
    """helpers.init_weights with norm weights near their identity value: 1, or 0 for Gemma's
    ``1 + weight`` norms."""
    return helpers.init_weights(model, std=std, seed=seed, gemma_norms_at_zero=True)


def load_pair(case: FamilyCase, folder: Path, seed: int = 0):
    """(transformers reference, the workbench model loaded from its save_pretrained folder)."""
    reference = case.hf_model(seed)
    reference.save_pretrained(folder)
    return reference, workbench.load_model(folder)


def max_logit_error(
    case: FamilyCase, reference, model, path: str, lengths=ROW_LENGTHS, seq_len: int = SEQ_LEN, seed: int = 0
) -> float:
    """Largest |ours - transformers| over real positions of ``padded_batch(..., seed=seed)``,
    asserting closeness (two-sided)."""
    input_ids, mask, position_ids = padded_batch(reference.config.vocab_size, lengths, seq_len, seed)
    # BLOOM's and MPT's references take no position ids; ALiBi only sees distances, so none are needed.
    kwargs = {"position_ids": position_ids} if case.takes_position_ids else {}
    real = mask.bool()  # logits at padding positions are meaningless on both sides
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=mask, **kwargs).logits[real]
    assert expected.std() > 0.1, "reference logits are near-constant: the test would be weak"
    with model.attention_options(explicit=path == "explicit"), torch.no_grad():
        actual = model(input_ids, attention_mask=mask, **kwargs)[real]
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)
    return float((actual - expected).abs().max())


def check_hooks_fire_once(model) -> None:
    """Every hook point fires exactly once in ``model(tokens)`` (the pattern hooks switch the
    explicit path on) and nothing stays attached afterwards."""
    counts = dict.fromkeys(model.hook_dict, 0)

    def count(tensor, hook):
        counts[hook.name] += 1

    tokens = padded_batch(model.config.vocab_size, lengths=(8,), seq_len=8)[0]
    with model.hooks([(lambda name: True, count)]), torch.no_grad():
        model(tokens)
    assert attached_hook_count(model) == 0
    if model.config.positions not in ("learned", "sinusoidal"):
        assert counts.pop("hook_pos_embed") == 0  # no position embedding to add
    if model.config.positions != "rope":  # nothing is rotated
        for name in [n for n in counts if n.endswith(("hook_rot_q", "hook_rot_k"))]:
            assert counts.pop(name) == 0
    # a routed expert fires only when some token chose it, and then once
    experts = {name: counts.pop(name) for name in list(counts) if ".experts." in name}
    assert all(n <= 1 for n in experts.values()) and (not experts or sum(experts.values()) > 0), experts
    assert counts and all(n == 1 for n in counts.values()), {k: n for k, n in counts.items() if n != 1}


def check_cache_matches_full_forward(model, prompt: int = 7, steps: int = 3) -> None:
    """Logits of a prompt then ``steps`` single tokens through the KV cache equal one full forward."""
    from workbench.model.kv_cache import KVCache

    tokens = torch.randint(0, model.config.vocab_size, (2, prompt + steps), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(model.config.n_layers)
        parts = [model(tokens[:, :prompt], cache=cache)]
        for step in range(prompt, prompt + steps):
            parts.append(model(tokens[:, step : step + 1], cache=cache))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=ATOL, rtol=RTOL)


def _point(root, name: str):
    for part in name.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def check_nnsight_reads_and_writes(model, read: str, write: str = "blocks.0.attn.hook_z") -> None:
    """nnsight reads the hook point ``read`` as our hooks see it, and a write to ``write`` (zeroed)
    gives the logits of the same ablation done with our hooks; nothing stays attached."""
    from nnsight import NNsight  # optional heavy dependency

    tokens = padded_batch(model.config.vocab_size, lengths=(8, 8), seq_len=8)[0]
    seen = {}
    with torch.no_grad():
        clean = model(tokens)
        with model.hooks([(read, lambda t, hook: seen.setdefault("value", t.clone()))]):
            model(tokens)
        with model.hooks([(write, lambda t, hook: torch.zeros_like(t))]):
            ablated = model(tokens)
    traced = NNsight(model)
    with traced.trace(tokens):
        read_value = _point(traced, read).output.save()
    with traced.trace(tokens):
        point = _point(traced, write)
        point.output = torch.zeros_like(point.output)
        traced_ablated = traced.output.save()
    assert torch.equal(read_value, seen["value"])
    assert float((ablated - clean).abs().max()) > 1e-3
    assert torch.equal(traced_ablated, ablated)
    assert attached_hook_count(model) == 0


def check_native_round_trip(model, folder: Path) -> None:
    """The workbench's own format keeps every family field and buffer: same config, same tensors,
    same logits (to 1e-6: tensors read back from a file may sit at other memory alignments, which
    changes the order of some fp32 sums; a lost field or buffer moves logits by far more)."""
    tokens = padded_batch(model.config.vocab_size, lengths=(8,), seq_len=8)[0]
    reloaded = workbench.load_model(workbench.save_checkpoint(model, folder))
    assert reloaded.config == model.config
    ours, theirs = model.state_dict(), reloaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens), model(tokens), atol=1e-6, rtol=1e-6)


def check_model_contract(model, folder: Path, read: str) -> None:
    """The four checks every family module runs on its model, in this order: the native format
    round trip (into ``folder``), hooks fire once, the KV cache, nnsight reading ``read``."""
    check_native_round_trip(model, folder)
    check_hooks_fire_once(model)
    check_cache_matches_full_forward(model)
    check_nnsight_reads_and_writes(model, read=read)


def family_pair(cases: dict) -> Any:
    """A module fixture ``pair`` over ``cases``: (case, transformers model, our model loaded by the
    real loader from the saved folder), one per case."""

    @pytest.fixture(scope="module", params=sorted(cases))
    def pair(request, tmp_path_factory):
        case = cases[request.param]
        return case, *load_pair(case, tmp_path_factory.mktemp(case.name))

    return pair


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_logits_match_transformers(pair, path: str) -> None:
    """Collected in each family module that imports it (with that module's ``pair``): full logits
    on both attention paths within ATOL of transformers'."""
    case, reference, model = pair
    assert max_logit_error(case, reference, model, path) <= ATOL
