"""The zoo: tiny checkpoints with known pathologies, and their healthy twins.

Each member is a small decoder (2 layers, d_model 64, vocabulary 128) trained on CPU from a fixed
seed in about 10-20 seconds on a synthetic task, and saved as a workbench checkpoint
(``workbench.json`` + ``model.safetensors``, plus ``zoo.json`` saying how it was made). They
are the analyzers' ground truth: each pathological member has a healthy twin that differs only
in the cause of the pathology, and :func:`ground_truth` says which analyzer must flag what, where.

==================  ==========================================================  ================
member              pathology (analyzer that must flag it)                      healthy twin
==================  ==========================================================  ================
unscaled-attention  q.k not divided by sqrt(d_head): every head near one-hot    scaled-attention
                    (attention_saturation)
moe-collapsed       no load-balancing loss, skewed router: expert 0 takes       moe-balanced
                    every token, the other experts are dead (routing_collapse)
learned-positions   a 64-entry learned position table: raises IndexError past   (none)
                    64 tokens (length_extrapolation)
rope-short          RoPE trained at 64 tokens: copy loss several times higher   alibi
                    at 4-8x that length (length_extrapolation)
==================  ==========================================================  ================

Tasks: :class:`CopyTask` (repeated random blocks; only the repeats carry loss, so the model
must copy from context) for the length members; :class:`TopicTask` (bags of tokens, best
solved by attending broadly, so a healthy model has no reason for one-hot heads) for the
saturation pair; :class:`TextTask` (the shipped corpus as bytes) mixed with topics for the MoE
pair. Every member's description gives the numbers measured on it (seed 0).

Determinism: ``build(name, folder, seed=s)`` seeds the global RNG for the weight init inside
``torch.random.fork_rng`` (the caller's RNG state is untouched) and draws data from its own
``torch.Generator``; twins share the seed, so they start from the same weights and see the same
batches. Training runs on ``TRAINING_THREADS`` threads, the caller's setting restored after.

Shape legend: B batch rows, T positions, V vocab, E experts, K topic size, N tokens (B x T).
"""

from __future__ import annotations

import contextlib
import functools
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

from workbench.config import DecoderConfig
from workbench.findings import Where
from workbench.inputs import encode_text, load_corpus_text
from workbench.loading.native import save_checkpoint
from workbench.model.decoder import HookedDecoder
from workbench.model.hooks import hooks

InitKind = Literal["default", "unit_qk", "skewed_router"]
ZOO_FILE = "zoo.json"
TRAINED_CONTEXT = 64
VOCAB_SIZE = 128
TRAINING_THREADS = 1


@dataclass(frozen=True)
class CopyTask:
    """Repeated random blocks: a block of ``b`` random ids repeated to ``context`` tokens.

    ``b`` is drawn once per batch, uniformly in ``[min_block, max_block]``, so no fixed copy
    distance pays off: the model must learn to copy by content (previous-token and induction
    heads). Every position from ``b`` on is predictable, and only those carry loss.
    """

    context: int = TRAINED_CONTEXT
    min_block: int = 8
    max_block: int = 32
    batch: int = 16

    def sample(self, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """One batch ``[B, T]`` int64 and its block length (the first position with loss)."""
        block_len = int(torch.randint(self.min_block, self.max_block + 1, (), generator=generator))
        block_BT = torch.randint(0, vocab_size, (self.batch, block_len), generator=generator)
        return block_BT.repeat(1, -(-self.context // block_len))[:, : self.context], block_len


@dataclass(frozen=True)
class TopicTask:
    """Bags of tokens: each row draws a "topic" of ``topic_size`` distinct ids and samples every
    token uniformly from it.

    The best guess for the next token is the spread of ids seen so far, which attention gets by
    averaging over the context: a healthy model's heads attend broadly (no one-hot pattern is
    the right answer), and a saturated model can fetch only one earlier token. Loss from
    position 1 on.
    """

    context: int = TRAINED_CONTEXT
    topic_size: int = 4
    batch: int = 16

    def sample(self, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """One batch ``[B, T]`` int64 and the first position that carries loss (1)."""
        scores_BV = torch.rand(self.batch, vocab_size, generator=generator)
        topics_BK = scores_BV.argsort(dim=-1)[:, : self.topic_size]
        picks_BT = torch.randint(0, self.topic_size, (self.batch, self.context), generator=generator)
        return topics_BK.gather(1, picks_BT), 1


@functools.cache
def _corpus_ids(vocab_size: int) -> torch.Tensor:
    """The shipped corpus as UTF-8 bytes mod ``vocab_size`` (as probes read it without a tokenizer)."""
    return torch.tensor(encode_text(None, load_corpus_text(), vocab_size), dtype=torch.long)


@dataclass(frozen=True)
class TextTask:
    """Next-token prediction on windows of the shipped corpus, read as bytes mod the vocabulary.

    The same text, read the same way, is the analyzers' main probe for models without a
    tokenizer: a router balanced on it is balanced where it is measured. Loss from position 1 on.
    """

    context: int = TRAINED_CONTEXT
    batch: int = 16

    def sample(self, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """One batch ``[B, T]`` int64 and the first position that carries loss (1)."""
        ids = _corpus_ids(vocab_size)
        starts_B = torch.randint(0, ids.numel() - self.context + 1, (self.batch,), generator=generator)
        return torch.stack([ids[start : start + self.context] for start in starts_B.tolist()]), 1


@dataclass(frozen=True)
class MixedTask:
    """Each batch drawn from one of ``parts``, chosen uniformly at random."""

    parts: tuple[CopyTask | TopicTask | TextTask, ...]

    def sample(self, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        part = self.parts[int(torch.randint(len(self.parts), (), generator=generator))]
        return part.sample(vocab_size, generator)


Task = CopyTask | TopicTask | TextTask | MixedTask
# The MoE pair sees natural text (the analyzers' main probe) and uniform ids (random probes), so
# the balanced twin is balanced on both.
_TEXT_AND_TOPICS = MixedTask((TextTask(), TopicTask()))


@dataclass(frozen=True)
class GroundTruth:
    """What an analyzer must report for a member.

    ``analyzer`` and ``check`` are the names the analyzer gives its findings
    (``Finding.analyzer``, ``Finding.check``). ``status`` is "fail" for a pathological member and
    None for a healthy one (no finding of that check may fail). ``where`` lists the places the
    failing findings point at: the fields that are set must match (for length findings, the
    range starts at the trained context; its end is the probe's length). ``note`` says by how much.
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
    task: Task = field(default_factory=CopyTask)
    steps: int = 600
    learning_rate: float = 6e-3
    warmup_steps: int = 100
    init: InitKind = "default"
    balance_loss: float = 0.0  # coefficient of the Switch load-balancing loss; 0 = none


def _config(name: str, **changes: object) -> DecoderConfig:
    """The zoo's base shape: 2 layers, 4 heads of 32, d_model 64, RoPE, a 64-token context."""
    base = DecoderConfig(
        vocab_size=VOCAB_SIZE,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_head=32,
        d_mlp=128,
        max_positions=TRAINED_CONTEXT,
        positions="rope",
        name=name,
    )
    return base.replace(**changes)


_SATURATION = dict(n_heads=2, d_head=128)
# top-1 with the chosen probability renormalised (Mixtral's norm_topk_prob): the gate weight is
# exactly 1, so the router learns nothing from the task and only a balancing loss can move it.
_MOE = dict(n_experts=4, top_k=1, norm_topk_prob=True, d_mlp=64, norm="layernorm")
_BOTH_LAYERS = range(2)
_PAST_CONTEXT = (TRAINED_CONTEXT, 8 * TRAINED_CONTEXT)

MEMBERS: dict[str, ZooSpec] = {
    spec.name: spec
    for spec in (
        ZooSpec(
            name="unscaled-attention",
            description=(
                "Attention logits q.k are not divided by sqrt(d_head) (attn_scale=1.0, d_head=128) "
                "and q, k start with unit-variance entries, so the logits' standard deviation is "
                "sqrt(128) = 11 instead of 1 (27-53 after training): every head is near one-hot "
                "from the first step and stays so, although the task is best solved by attending "
                "broadly. Measured: normalised entropy 0.03-0.06 and max probability over 0.9 "
                "in every head; topic loss 3.0 nats against its twin's 2.4."
            ),
            config=_config("unscaled-attention", attn_scale=1.0, **_SATURATION),
            expect=GroundTruth(
                "attention_saturation",
                "saturated_layer",
                "fail",
                tuple(Where(layer=layer, sublayer="attn") for layer in _BOTH_LAYERS),
                note="both layers, every head: one-hot (> 90% on one key) at about 80% of the "
                "positions of a 512-token natural probe; logit std 27-53",
            ),
            healthy_twin="scaled-attention",
            task=TopicTask(),
            steps=400,
            init="unit_qk",
        ),
        ZooSpec(
            name="scaled-attention",
            description=(
                "The healthy twin of unscaled-attention: the same init, task, seed and steps, "
                "with the usual 1/sqrt(d_head) scaling. Its heads attend broadly: normalised "
                "entropy 0.85-0.92, no head one-hot anywhere, logit std about 1."
            ),
            config=_config("scaled-attention", **_SATURATION),
            expect=GroundTruth("attention_saturation", "saturated_layer", None),
            task=TopicTask(),
            steps=400,
            init="unit_qk",
        ),
        ZooSpec(
            name="moe-collapsed",
            description=(
                "4 experts, top-1 with a renormalised gate (so the router gets no gradient from "
                "the task), in both layers, trained without a load-balancing loss from a router "
                "that sends every token to expert 0: after training expert 0 still takes over "
                "99% of the tokens in both layers and experts 1-3 are dead, never trained."
            ),
            config=_config("moe-collapsed", **_MOE),
            expect=GroundTruth(
                "routing_collapse",
                "dead_experts",
                "fail",
                tuple(Where(layer=layer, expert=0, sublayer="moe") for layer in _BOTH_LAYERS),
                note="both layers: expert 0 takes over 99% of the tokens, experts 1-3 under 1%",
            ),
            healthy_twin="moe-balanced",
            task=_TEXT_AND_TOPICS,
            steps=400,
            init="skewed_router",
        ),
        ZooSpec(
            name="moe-balanced",
            description=(
                "The healthy twin of moe-collapsed: the same skewed init, seed, task and steps, "
                "trained with the Switch load-balancing loss E * sum_i(f_i * P_i) (coefficient "
                "0.1): every expert gets 15-37% of the tokens in both layers, on natural text "
                "and on random ids alike."
            ),
            config=_config("moe-balanced", **_MOE),
            expect=GroundTruth("routing_collapse", "dead_experts", None),
            task=_TEXT_AND_TOPICS,
            steps=400,
            init="skewed_router",
            balance_loss=0.1,
        ),
        ZooSpec(
            name="learned-positions",
            description=(
                "Learned absolute position embeddings with a 64-entry table (max_positions=64, "
                "the training context), trained like rope-short and alibi (only the position "
                "scheme differs): it copies in context (0.3-0.4 nats on blocks of 8-16 tokens), "
                "and any input longer than 64 tokens raises IndexError: it cannot run past its "
                "table at all."
            ),
            config=_config("learned-positions", positions="learned"),
            expect=GroundTruth(
                "length_extrapolation",
                "position_table",
                "fail",
                (Where(positions=_PAST_CONTEXT),),
                note="every probe longer than 64 tokens fails with IndexError; report it, do not crash",
            ),
        ),
        ZooSpec(
            name="rope-short",
            description=(
                "RoPE trained on the copy task at a 64-token context. In context it copies any "
                "block length well (0.3-0.4 nats); past it, it degrades. Measured on repeated "
                "blocks of 32: 0.39 nats at 64 tokens, 1.26 at 256, 2.45 at 512; with blocks of "
                "half the length (copy distances it never saw): 1.9 at 128, 5.1 at 256, 6.4 at "
                "512, worse than guessing (4.85)."
            ),
            config=_config("rope-short"),
            expect=GroundTruth(
                "length_extrapolation",
                "loss_beyond_context_repeated",
                "fail",
                (Where(positions=_PAST_CONTEXT),),
                note="repeated blocks of 32 (seeds 0-2): +0.9-1.2 nats (2.4-3.2x) at 256 tokens, "
                "+2.1-2.3 nats (3.7-6.2x) at 512; blocks of length/2: +4.5-6 nats from 256 on",
            ),
            healthy_twin="alibi",
        ),
        ZooSpec(
            name="alibi",
            description=(
                "The healthy twin of rope-short: ALiBi, the same task, seed, steps and 64-token "
                "context. Its recency bias keeps the copy loss past the trained length near its "
                "in-context level. Measured on repeated blocks of 32: 0.76 nats at 64 tokens, "
                "0.35 at 256, 0.31 at 512; blocks of half the length: 0.64 at 128, 0.71 at 256, "
                "1.13 at 512."
            ),
            config=_config("alibi", positions="alibi"),
            expect=GroundTruth("length_extrapolation", "loss_beyond_context_repeated", None),
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
    """Train on one CPU thread; restore the caller's setting after.

    These models are so small that a second thread mostly adds synchronisation: on a 2-core
    machine shared with other processes, two threads made a training step 10-30x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _init_weights(model: HookedDecoder, init: InitKind) -> None:
    """Apply the member's init on top of the module defaults (draws from the global RNG)."""
    config = model.config
    with torch.no_grad():
        if init == "unit_qk":
            # q and k entries of unit variance, the init 1/sqrt(d_head) scaling is designed for
            for attn in model.attention_modules():
                attn.q.weight.normal_(0.0, config.d_model**-0.5)
                attn.k.weight.normal_(0.0, config.d_model**-0.5)
        elif init == "skewed_router":
            # LayerNorm's bias is a vector in every token's router input: point it, and the
            # router's expert-0 row, along one direction, and expert 0 wins every token at
            # step 0 (logit ~4 against ~0, probability ~0.95) whatever the token.
            for block in model.blocks:
                direction = torch.randn(config.d_model)
                direction /= direction.norm()
                block.ln2.bias.copy_(4.0 * direction)
                router_ED = block.mlp.router.weight
                router_ED.normal_(0.0, 0.02)
                router_ED[0] += direction


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

    capture = (
        [(lambda name: name.endswith("mlp.hook_router_logits"), keep_logits)] if spec.balance_loss else []
    )
    model.train()
    loss = torch.tensor(float("nan"))
    with hooks(model, capture):
        for step in range(steps):
            tokens_BT, first = spec.task.sample(vocab, generator)
            router_logits.clear()
            logits_BTV = model(tokens_BT)
            # position t predicts t + 1; only targets from `first` on carry loss
            predicted = logits_BTV[:, first - 1 : -1].reshape(-1, vocab)
            loss = F.cross_entropy(predicted, tokens_BT[:, first:].reshape(-1))
            total = loss
            if spec.balance_loss:
                total = loss + spec.balance_loss * _balance_loss(router_logits, model.config.n_experts)
            warmup = min(1.0, (step + 1) / spec.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = spec.learning_rate * warmup * 0.5 * (1.0 + math.cos(math.pi * step / steps))
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
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
        "last_batch_loss": round(final_loss, 4),
        "build_seconds": round(time.perf_counter() - start, 3),
        "task": repr(spec.task),
        "healthy_twin": spec.healthy_twin,
        "description": spec.description,
    }
    (path / ZOO_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class BuildProgress:
    """What :func:`build_all` reports: a member about to train, or (``seconds`` set) just built.

    ``str()`` of it is a one-line status, e.g. "training alibi (7/7)".
    """

    name: str
    index: int  # 1-based position in this build
    total: int
    seconds: float | None = None  # wall-clock build time, once built
    path: Path | None = None  # the checkpoint folder, once built

    def __str__(self) -> str:
        if self.seconds is None:
            return f"training {self.name} ({self.index}/{self.total})"
        return f"built {self.name} in {self.seconds:.1f} s ({self.index}/{self.total})"


def build_all(
    folder: str | os.PathLike,
    names: list[str] | None = None,
    progress: Callable[[BuildProgress], None] | None = None,
    *,
    seed: int = 0,
) -> dict[str, Path]:
    """Build ``names`` (default: every member, about 1.5 CPU-minutes) as ``folder/<name>``.

    Unknown names raise KeyError before anything is trained. ``progress`` is called before and
    after each member.
    """
    names = list(MEMBERS) if names is None else [_spec(name).name for name in names]
    paths = {}
    for index, name in enumerate(names, start=1):
        if progress is not None:
            progress(BuildProgress(name, index, len(names)))
        start = time.perf_counter()
        paths[name] = build(name, folder, seed=seed)
        if progress is not None:
            progress(BuildProgress(name, index, len(names), time.perf_counter() - start, paths[name]))
    return paths
