"""The zoo: tiny checkpoints with known pathologies, and their healthy twins.

Each member is a small decoder trained on CPU from a fixed seed in seconds, on a synthetic
copying task, and saved as a workbench checkpoint (``workbench.json`` + ``model.safetensors``,
plus a ``zoo.json`` saying how it was made). They are the analyzers' ground truth: every
pathological member has a healthy twin that differs in the one thing that causes the pathology,
and :func:`ground_truth` says which analyzer must flag what, and where.

==================== ========================================================= ==============
member               pathology (analyzer)                                      healthy twin
==================== ========================================================= ==============
unscaled-attention   q.k without 1/sqrt(d_head): saturated, near one-hot       scaled-attention
                     attention in every head (saturation)
moe-collapsed        no load-balancing loss from a skewed router: expert 0      moe-balanced
                     takes almost every token, others dead (routing_collapse)
learned-positions    learned absolute positions, a 64-entry table: cannot run   (none)
                     past 64 tokens, raises IndexError (length_extrapolation)
rope-short           RoPE trained at 64 tokens: the copy loss explodes at        alibi
                     4-8x that length (length_extrapolation)
==================== ========================================================= ==============

The task (:class:`CopyTask`): a random block of ``b`` tokens repeated to fill the context,
``b`` drawn per batch from a range; loss only on the predictable positions (from ``b`` on), so a
model must learn to copy from context (previous-token + induction heads).

Determinism: ``build(name, folder, seed=s)`` seeds the global RNG for the weight init inside
``torch.random.fork_rng`` (the caller's RNG state is untouched) and draws data from its own
``torch.Generator``; twins use the same seed, so they start from the same weights and see the
same batches. Training runs with ``min(2, cpu_count)`` threads, restored afterwards.

Shape legend: B batch rows, T positions, V vocab, E experts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from workbench.checkpoint import save_checkpoint
from workbench.config import DecoderConfig
from workbench.findings import Where
from workbench.hooks import hooks
from workbench.model import HookedDecoder

InitKind = Literal["default", "unit_qk", "skewed_router"]
ZOO_FILE = "zoo.json"
TRAINED_CONTEXT = 64
VOCAB_SIZE = 128


@dataclass(frozen=True)
class CopyTask:
    """Repeated random blocks: a block of ``b`` random ids repeated to ``context`` tokens.

    ``b`` is drawn once per batch, uniformly in ``[min_block, max_block]``; every position from
    ``b`` on is predictable by copying, and only those positions carry loss.
    """

    context: int = TRAINED_CONTEXT
    min_block: int = 8
    max_block: int = 32
    batch: int = 16

    def sample(self, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """One batch ``[B, T]`` int64 and its block length."""
        block_len = int(torch.randint(self.min_block, self.max_block + 1, (), generator=generator))
        block_BT = torch.randint(0, vocab_size, (self.batch, block_len), generator=generator)
        return block_BT.repeat(1, -(-self.context // block_len))[:, : self.context], block_len


@dataclass(frozen=True)
class GroundTruth:
    """What an analyzer must report for a member.

    ``status`` is "fail" for a pathological member and None for a healthy one (the analyzer
    must not fail it). ``where`` lists every place the finding must point at; an empty
    ``where`` with ``layer=None`` means the whole model (e.g. every head).
    """

    analyzer: str
    check: str
    status: Literal["fail"] | None
    where: tuple[Where, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class ZooSpec:
    """One zoo member: what it is, how it is made, what must be found in it."""

    name: str
    description: str
    config: DecoderConfig
    expect: GroundTruth
    healthy_twin: str | None = None
    task: CopyTask = field(default_factory=CopyTask)
    steps: int = 600
    learning_rate: float = 6e-3
    warmup_steps: int = 100
    init: InitKind = "default"
    balance_loss: float = 0.0  # coefficient of the Switch load-balancing loss; 0 = none


def _config(name: str, **changes: object) -> DecoderConfig:
    """The zoo's base shape: 2 layers, 4 heads of 16, d_model 64, RoPE, a 64-token context."""
    base = DecoderConfig(
        vocab_size=VOCAB_SIZE,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_head=16,
        d_mlp=128,
        max_positions=TRAINED_CONTEXT,
        positions="rope",
        name=name,
    )
    return base.replace(**changes)


_SATURATION = dict(n_heads=2, d_head=64)
_MOE = dict(n_experts=4, top_k=1, norm_topk_prob=True, d_mlp=64)
_MOE_WHERE = tuple(Where(layer=layer, expert=0, sublayer="moe") for layer in range(2))
_PAST_CONTEXT = Where(positions=(TRAINED_CONTEXT, 8 * TRAINED_CONTEXT))

MEMBERS: dict[str, ZooSpec] = {
    spec.name: spec
    for spec in (
        ZooSpec(
            name="unscaled-attention",
            description=(
                "Attention logits q.k are not divided by sqrt(d_head) (attn_scale=1.0, d_head=64) "
                "and q, k start with unit-variance entries, so logits have a standard deviation "
                "near 8: every head's softmax is saturated (near one-hot, normalised entropy far "
                "below its twin's) from the first step, and stays so. The saturation analyzer "
                "must fail every head of both layers."
            ),
            config=_config("unscaled-attention", attn_scale=1.0, **_SATURATION),
            expect=GroundTruth(
                "saturation", "attention_entropy", "fail", (Where(sublayer="attn"),),
                note="every head of layers 0 and 1",
            ),
            healthy_twin="scaled-attention",
            init="unit_qk",
        ),
        ZooSpec(
            name="scaled-attention",
            description=(
                "The healthy twin of unscaled-attention: the same weights init, task, seed and "
                "steps with the usual 1/sqrt(d_head) scaling. The saturation analyzer must not "
                "fail it."
            ),
            config=_config("scaled-attention", **_SATURATION),
            expect=GroundTruth("saturation", "attention_entropy", None),
            init="unit_qk",
        ),
        ZooSpec(
            name="moe-collapsed",
            description=(
                "4 experts, top-1 (Switch-style gating), trained without a load-balancing loss "
                "from a router that favours expert 0: after training expert 0 takes almost "
                "every token in both MoE layers and at least one other expert gets none. The "
                "routing_collapse analyzer must fail layers 0 and 1, pointing at expert 0."
            ),
            config=_config("moe-collapsed", **_MOE),
            expect=GroundTruth("routing_collapse", "load_share", "fail", _MOE_WHERE),
            healthy_twin="moe-balanced",
            init="skewed_router",
        ),
        ZooSpec(
            name="moe-balanced",
            description=(
                "The healthy twin of moe-collapsed: the same skewed init, seed, task and steps, "
                "trained with the Switch load-balancing loss E * sum_i(f_i * P_i); every expert "
                "ends up with a fair share. The routing_collapse analyzer must not fail it."
            ),
            config=_config("moe-balanced", **_MOE),
            expect=GroundTruth("routing_collapse", "load_share", None),
            init="skewed_router",
            balance_loss=0.1,
        ),
        ZooSpec(
            name="learned-positions",
            description=(
                "Learned absolute position embeddings with a 64-entry table (max_positions=64, "
                "the training context): the model raises IndexError for any position past 63. "
                "The length_extrapolation analyzer must report that it cannot run past 64 tokens."
            ),
            config=_config("learned-positions", positions="learned"),
            expect=GroundTruth(
                "length_extrapolation", "position_table", "fail",
                (Where(sublayer="embed", positions=(TRAINED_CONTEXT, 8 * TRAINED_CONTEXT)),),
            ),
        ),
        ZooSpec(
            name="rope-short",
            description=(
                "RoPE trained on the copy task at a 64-token context: in context it copies "
                "well, but on repeated blocks of 32 tokens at 256-512 tokens (4-8x the trained "
                "context) its loss on the repeats is many times its in-context loss. The "
                "length_extrapolation analyzer must fail it past 64 tokens."
            ),
            config=_config("rope-short"),
            expect=GroundTruth("length_extrapolation", "loss_past_context", "fail", (_PAST_CONTEXT,)),
            healthy_twin="alibi",
        ),
        ZooSpec(
            name="alibi",
            description=(
                "The healthy twin of rope-short: ALiBi, the same task, seed, steps and 64-token "
                "context; its recency bias keeps the copy loss at or below its in-context level "
                "at 4-8x the trained length. The length_extrapolation analyzer must not fail it."
            ),
            config=_config("alibi", positions="alibi"),
            expect=GroundTruth("length_extrapolation", "loss_past_context", None),
        ),
    )
}


def ground_truth(name: str) -> GroundTruth:
    """What an analyzer must report for member ``name`` (status None: nothing may fail)."""
    return _spec(name).expect


def _spec(name: str) -> ZooSpec:
    if name not in MEMBERS:
        raise KeyError(f"no zoo member {name!r}; choose one of {', '.join(MEMBERS)}")
    return MEMBERS[name]


@contextlib.contextmanager
def _training_threads() -> Iterator[None]:
    """Use at most 2 CPU threads while training; restore the caller's setting after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _init_weights(model: HookedDecoder, init: InitKind) -> None:
    """Apply the member's init on top of the module defaults (uses the global, seeded RNG)."""
    config = model.config
    with torch.no_grad():
        if init == "unit_qk":
            # q and k entries of unit variance: the init 1/sqrt(d_head) scaling is designed for.
            for attn in model.attention_modules():
                attn.q.weight.normal_(0.0, config.d_model**-0.5)
                attn.k.weight.normal_(0.0, config.d_model**-0.5)
        elif init == "skewed_router":
            # Every token embedding shares a common direction (as real residual streams do) and
            # each router's expert-0 row points along it: expert 0 wins ~all tokens at step 0,
            # with a probability near 0.6, not saturated, so a balancing loss can still act.
            common = torch.randn(config.d_model)
            common /= common.norm()
            model.embed.weight.add_(common * 0.5 * math.sqrt(config.d_model))
            for block in model.blocks:
                router = block.mlp.router.weight  # (E, d_model)
                router.normal_(0.0, 0.02)
                router[0] += common * 4.0 / math.sqrt(config.d_model)


def _balance_loss(router_logits: list[torch.Tensor], n_experts: int) -> torch.Tensor:
    """Switch Transformer's E * sum_i f_i * P_i, averaged over MoE layers.

    f_i: the fraction of tokens whose top-1 expert is i (no gradient); P_i: the mean router
    probability of expert i. Equals 1 when routing is uniform.
    """
    losses = []
    for logits in router_logits:  # (B, T, E)
        probs_NE = torch.softmax(logits.reshape(-1, n_experts).float(), dim=-1)
        top1_N = probs_NE.argmax(dim=-1)
        fraction_E = torch.bincount(top1_N, minlength=n_experts).float() / top1_N.numel()
        losses.append(n_experts * (fraction_E * probs_NE.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def _train(model: HookedDecoder, spec: ZooSpec, generator: torch.Generator, steps: int) -> float:
    """Train ``model`` in place with AdamW, warm-up then cosine decay; return the last loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    vocab = model.config.vocab_size
    router_logits: list[torch.Tensor] = []

    def keep_logits(logits: torch.Tensor, hook: object) -> None:
        router_logits.append(logits)

    capture = [(lambda name: name.endswith("mlp.hook_router_logits"), keep_logits)] if spec.balance_loss else []
    model.train()
    loss = torch.tensor(float("nan"))
    with hooks(model, capture):
        for step in range(steps):
            tokens_BT, block_len = spec.task.sample(vocab, generator)
            router_logits.clear()
            logits_BTV = model(tokens_BT)
            # position t predicts t + 1; targets from block_len on are copies
            loss = F.cross_entropy(logits_BTV[:, block_len - 1 : -1].reshape(-1, vocab), tokens_BT[:, block_len:].reshape(-1))
            total = loss
            if spec.balance_loss:
                total = loss + spec.balance_loss * _balance_loss(router_logits, model.config.n_experts)
            warmup = min(1.0, (step + 1) / spec.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = spec.learning_rate * warmup * 0.5 * (1.0 + math.cos(math.pi * step / steps))
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
    loss = loss.detach()
    model.eval()
    return loss.item()


def build(name: str, folder: str | os.PathLike, *, seed: int = 0, steps: int | None = None) -> Path:
    """Train member ``name`` and save it as the checkpoint folder ``folder/name``; return it.

    ``steps`` overrides the member's training steps (quick tests; the ground truth holds only
    for the default). The same seed gives the same weights on the same machine.
    """
    spec = _spec(name)
    steps = spec.steps if steps is None else steps
    start = time.perf_counter()
    with _training_threads(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HookedDecoder(spec.config)
        _init_weights(model, spec.init)
        generator = torch.Generator(device="cpu").manual_seed(seed + 1)
        final_loss = _train(model, spec, generator, steps)
    path = save_checkpoint(model, Path(folder) / name)
    provenance = {
        "member": name,
        "seed": seed,
        "steps": steps,
        "final_copy_loss": final_loss,
        "build_seconds": round(time.perf_counter() - start, 3),
        "task": "repeated random blocks, block length %d-%d, context %d, batch %d"
        % (spec.task.min_block, spec.task.max_block, spec.task.context, spec.task.batch),
        "healthy_twin": spec.healthy_twin,
        "description": spec.description,
    }
    (path / ZOO_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return path


ProgressFn = Callable[[str, Path, float], None]


def build_all(
    folder: str | os.PathLike, names: list[str] | None = None, progress: ProgressFn | None = None
) -> dict[str, Path]:
    """Build ``names`` (default: every member) under ``folder``; ``progress(name, path, seconds)``
    is called after each one."""
    paths = {}
    for name in names if names is not None else list(MEMBERS):
        start = time.perf_counter()
        paths[name] = build(name, folder)
        if progress is not None:
            progress(name, paths[name], time.perf_counter() - start)
    return paths
