"""Shared fixtures: tiny model configs per family, seeded weights, padded batches, SmolLM2.

* ``FAMILY_CASES``: one tiny transformers config per family and variant the loader supports
  (litgpt-style: a randomly initialised transformers model is the reference).
* ``TINY_DECODERS``: tiny DecoderConfigs for tests of the hooked decoder alone.
* ``smollm2``: the real SmolLM2-135M (GGUF) in the workbench and in transformers (slow).

Weights are drawn with a larger spread than the libraries' defaults (``init_weights``) so that
logits and attention patterns are far from uniform and a numerical mistake shows up.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import (  # noqa: I001 - tests/ is on sys.path through this conftest
    FAMILY_CASES,
    TINY_DECODERS,
    FamilyCase,
    SmolLM2Pair,
    init_weights,
    one_thread,
    padded_batch,
)

from workbench.config import DecoderConfig
from workbench.model.decoder import HookedDecoder


@pytest.fixture
def single_thread(request: pytest.FixtureRequest):
    """One intra-op thread for tiny models (not for ``slow`` ones).

    Tiny matmuls gain nothing from a second thread, and on a shared 2-core machine the spinning
    threads made these tests up to 30x slower.
    """
    if request.node.get_closest_marker("slow"):
        yield
        return
    with one_thread():
        yield


# --- transformers families ------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(FAMILY_CASES), ids=list(FAMILY_CASES))
def family_case(request: pytest.FixtureRequest) -> FamilyCase:
    """Every family/variant in turn."""
    return FAMILY_CASES[request.param]


@pytest.fixture(scope="session")
def family_cases() -> dict[str, FamilyCase]:
    """All cases by name, for tests that pick a few."""
    return FAMILY_CASES


@pytest.fixture(scope="session")
def make_batch() -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``make_batch(vocab_size, lengths, seq_len, seed)``: see :func:`padded_batch`."""
    return padded_batch


# --- tiny hooked decoders -------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_decoder() -> Callable[..., HookedDecoder]:
    """``tiny_decoder(name_or_config, seed=0)``: a seeded HookedDecoder in eval mode.

    ``name_or_config`` is a key of ``TINY_DECODERS`` or a DecoderConfig.
    """

    def build(name_or_config: str | DecoderConfig, seed: int = 0) -> HookedDecoder:
        config = TINY_DECODERS[name_or_config] if isinstance(name_or_config, str) else name_or_config
        return init_weights(HookedDecoder(config), seed=seed).eval()

    return build


# --- the real model -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2() -> SmolLM2Pair:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) in the workbench and in transformers, both fp32."""
    import transformers

    import workbench
    from workbench.loading.sources import smollm2_path

    path = smollm2_path()
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return SmolLM2Pair(workbench.load_model("smollm2"), reference, tokenizer)
