"""Tiny transformers MoEs (Mixtral classes) trained in the tests, and their ground truth.

The routing analyzer was written against the zoo's workbench-native MoEs; these cases are built
with transformers' own classes, trained a few hundred steps on CPU from a fixed seed, saved with
``save_pretrained`` and loaded by the workbench through its real loader. Ground truth comes from
transformers: expert load from the model's own router logits (``output_router_logits=True``) and
the next-token loss.

Cases (seed 0):

* ``collapsed``: top-2 of 4 experts, router skewed at init towards expert 0 (a direction shared by
  every token's embedding), trained without a load-balancing loss: expert 0 stays every token's
  first choice while the second choices spread, so slot shares look tolerable;
* ``balanced``: the same init, data and steps with Mixtral's load-balancing loss
  (``router_aux_loss_coef``): the healthy twin of ``collapsed`` and of ``reset``;
* ``reset``: ``balanced`` with its router weights re-initialised (a conversion that lost the gate
  weights): near-uniform router probabilities, a balance loss near 1, and a higher loss.

Shape legend: B batch rows, T positions, V vocab, E experts, N tokens (B x T).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from helpers import one_thread
from transformers import MixtralConfig, MixtralForCausalLM

from workbench import inputs, structured_text
from workbench.zoo import _balance_loss

VOCAB = 128
CONTEXT = 64
N_EXPERTS = 4
TOP_K = 2


def config(aux_loss: float = 0.0) -> MixtralConfig:
    """2 layers, d_model 64, 4 heads, 4 experts of width 64, top-2, byte vocabulary; a claimed context
    of 512 so the pipeline's 512-token probes stay inside it."""
    return MixtralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        num_local_experts=N_EXPERTS, num_experts_per_tok=TOP_K, router_aux_loss_coef=aux_loss,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip


@functools.cache
def _domain_ids() -> dict[str, torch.Tensor]:
    """The two training domains as byte streams mod VOCAB: prose and structured text."""
    prose = inputs.encode_text(None, inputs.load_corpus_text()[:200_000], VOCAB)
    structured = inputs.encode_text(None, structured_text.structured_text(200_000, seed=1000), VOCAB)
    return {"natural": torch.tensor(prose), "structured": torch.tensor(structured)}


def batch(generator: torch.Generator, rows: int = 16) -> torch.Tensor:
    """Half the rows prose, half structured text: ``[rows, CONTEXT]`` int64."""
    out = []
    for index in range(rows):
        ids = _domain_ids()["natural" if index % 2 == 0 else "structured"]
        start = int(torch.randint(0, ids.numel() - CONTEXT, (), generator=generator))
        out.append(ids[start : start + CONTEXT])
    return torch.stack(out)


def _skew_router(model: MixtralForCausalLM, generator: torch.Generator) -> None:
    """Give every token's embedding a shared direction u and point each router's expert-0 row
    along it: expert 0 becomes every token's first choice (probability ~0.9 at step 0)."""
    with torch.no_grad():
        d_model = model.config.hidden_size
        u = torch.randn(d_model, generator=generator)
        u /= u.norm()
        model.model.embed_tokens.weight += 0.3 * u
        for layer in model.model.layers:
            gate_ED = layer.mlp.gate.weight
            gate_ED[0] += 1.0 * u


def train(balance: float, skewed: bool, steps: int = 300, seed: int = 0) -> MixtralForCausalLM:
    """A tiny Mixtral trained ``steps`` AdamW steps on prose + structured text; ``skewed``: start
    from a router that sends every token to expert 0 first."""
    with one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MixtralForCausalLM(config())
        generator = torch.Generator().manual_seed(seed + 1)
        if skewed:
            _skew_router(model, generator)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        model.train()
        for step in range(steps):
            tokens_BT = batch(generator)
            out = model(tokens_BT, labels=tokens_BT, output_router_logits=balance > 0)
            # Switch Transformer's E * sum_i f_i * P_i on each token's first choice, averaged over
            # layers (the zoo's balance loss). Mixtral's own auxiliary loss counts top-k slots, which
            # a router satisfies while one expert stays every token's first choice (measured here:
            # 0.98 of first choices at coefficient 1.0); counting first choices balances what the
            # token mostly gets.
            loss = out.loss + balance * _balance_loss(out.router_logits, N_EXPERTS) if balance else out.loss
            for group in optimizer.param_groups:
                group["lr"] = 3e-3 * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / steps))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
    return model


def reset_router(model: MixtralForCausalLM, seed: int = 0) -> MixtralForCausalLM:
    """Re-initialise every router as transformers would for a missing gate tensor
    (normal, std ``initializer_range``), in place."""
    generator = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for layer in model.model.layers:
            gate_ED = layer.mlp.gate.weight
            gate_ED.copy_(torch.randn(gate_ED.shape, generator=generator) * model.config.initializer_range)
    return model


@dataclass(frozen=True)
class Truth:
    """What transformers measures on one input: loss (nats) and, per layer, first-choice share
    per expert, coverage (fraction of tokens that chose the expert among their top k), mean
    router entropy / log E."""

    loss: float
    first_share: list[list[float]]  # [layer][expert]
    coverage: list[list[float]]  # [layer][expert]
    entropy_norm: list[float]  # [layer]


def truth(model: MixtralForCausalLM, tokens_BT: torch.Tensor) -> Truth:
    with torch.no_grad():
        out = model(tokens_BT, labels=tokens_BT, output_router_logits=True)
    first, coverage, entropy = [], [], []
    for logits_NE in out.router_logits:
        probs_NE = torch.softmax(logits_NE.float(), dim=-1)
        n, experts = probs_NE.shape
        top_Nk = probs_NE.topk(TOP_K, dim=-1).indices
        first.append((torch.bincount(top_Nk[:, 0], minlength=experts).float() / n).tolist())
        coverage.append((torch.bincount(top_Nk.reshape(-1), minlength=experts).float() / n).tolist())
        entropy.append(float(-torch.special.xlogy(probs_NE, probs_NE).sum(-1).mean() / math.log(experts)))
    return Truth(float(out.loss), first, coverage, entropy)


def probe_tokens(kind: str, length: int = 512, seed: int = 3) -> torch.Tensor:
    """The workbench's probe kinds, built the way the pipeline builds them for this model."""
    if kind == "structured":
        return structured_text.structured_text_tokens(None, length, seed=seed, vocab_size=VOCAB)
    return inputs.make_probe(kind, length, vocab_size=VOCAB, seed=seed, block_len=32).tokens


def save(model: MixtralForCausalLM, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def heldout_loss(model: MixtralForCausalLM) -> float:
    """Next-token loss (nats) on 32 held-out rows of the training mixture."""
    tokens_BT = batch(torch.Generator().manual_seed(12345), rows=32)
    with torch.no_grad():
        return float(F.cross_entropy(model(tokens_BT).logits[:, :-1].reshape(-1, VOCAB),
                                     tokens_BT[:, 1:].reshape(-1)))  # fmt: skip
