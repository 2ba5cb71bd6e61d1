"""Training a zoo member: weight init, the optional load-balancing loss, the loop.

Shape legend: B batch rows, T positions, V vocab, E experts, N tokens (B x T)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from workbench.model.decoder import HookedDecoder
from workbench.model.hooks import hooks
from workbench.zoo.recipe import InitKind, ZooSpec
from workbench.zoo.tasks import DOMAIN_IDS

TRAINING_THREADS = 1
SINK_FIRST_QUERY = 8  # the sink loss reads queries from here on (the analyzer's skip_positions)


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
        elif init == "domain_router":
            # ids below DOMAIN_IDS share +u in their embedding, the others -u; experts 2-3 look
            # along +u, experts 0-1 along -u: each domain starts on its own pair of experts.
            u = torch.randn(config.d_model)
            u /= u.norm()
            sign_V = torch.where(torch.arange(config.vocab_size) < DOMAIN_IDS, 1.0, -1.0)
            model.embed.weight += 2.0 * model.embed.weight.std() * math.sqrt(config.d_model) * sign_V[:, None] * u
            for block in model.blocks:
                router_ED = block.mlp.router.weight
                router_ED[2:] += u
                router_ED[:2] -= u


def _write_q_scale(model: HookedDecoder, factor: float, heads: tuple[int, ...] | None,
                   layers: tuple[int, ...] | None = None) -> None:
    """Multiply the W_q rows (and bias) of ``heads`` (None: all) in ``layers`` (None: every
    layer) by ``factor``."""
    d_head = model.config.d_head
    with torch.no_grad():
        for layer, attn in enumerate(model.attention_modules()):
            if layers is not None and layer not in layers:
                continue
            for head in range(model.config.n_heads) if heads is None else heads:
                rows = slice(head * d_head, (head + 1) * d_head)
                attn.q.weight[rows] *= factor
                if attn.q.bias is not None:
                    attn.q.bias[rows] *= factor


# transformers initialises a missing router tensor with normal(0, initializer_range = 0.02)
RESET_ROUTER_STD = 0.02


def _reset_routers(model: HookedDecoder) -> None:
    """Re-initialise every router as transformers does a router tensor a conversion lost."""
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.router.weight.normal_(0.0, RESET_ROUTER_STD)


def _write_residual_scale(model: HookedDecoder, factor: float) -> None:
    """Multiply the token embedding and every write to the residual stream (attention's output
    projection, the MLP's down projection, with their biases) by ``factor``.

    Every residual stream is then ``factor`` times larger; the pre-norms in front of each
    sublayer and the unembedding divide it out again, so the function is unchanged (but for the
    norms' epsilon) while its activations run ``factor`` times hotter."""
    config = model.config
    if config.n_experts or config.post_norms or config.embed_norm or config.positions == "learned":
        raise ValueError("residual_scale is written only into dense pre-norm models without a position table")
    with torch.no_grad():
        model.embed.weight *= factor
        for block in model.blocks:
            for linear in (block.attn.o, block.mlp.w_out):
                linear.weight *= factor
                if linear.bias is not None:
                    linear.bias *= factor


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
    sink_mass: list[torch.Tensor] = []
    if spec.sink_head is not None:
        sink_layer, sink = spec.sink_head

        def keep_sink(pattern_BHQK: torch.Tensor, hook: object) -> None:
            sink_mass.append(pattern_BHQK[:, sink, SINK_FIRST_QUERY:, 0].mean())

        capture.append((f"blocks.{sink_layer}.attn.hook_pattern", keep_sink))
    model.train()
    loss = torch.tensor(float("nan"))
    with hooks(model, capture):
        for step in range(steps):
            tokens_BT, first = spec.task.sample(vocab, generator)
            router_logits.clear()
            sink_mass.clear()
            logits_BTV = model(tokens_BT)
            # position t predicts t + 1; only targets from `first` on carry loss
            predicted = logits_BTV[:, first - 1 : -1].reshape(-1, vocab)
            loss = F.cross_entropy(predicted, tokens_BT[:, first:].reshape(-1))
            total = loss
            if spec.balance_loss:
                total = loss + spec.balance_loss * _balance_loss(router_logits, model.config.n_experts)
            if sink_mass:
                total = total + (sink_mass[0] - spec.sink_mass) ** 2
            warmup = min(1.0, (step + 1) / spec.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = spec.learning_rate * warmup * 0.5 * (1.0 + math.cos(math.pi * step / steps))
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
    model.eval()
    return loss.item()
