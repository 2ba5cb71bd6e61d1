"""The zoo's members: each one's config, task, training recipe and ground truth (what must be flagged where)."""

from __future__ import annotations

from workbench.config import RopeScaling
from workbench.findings import Where
from workbench.zoo.recipe import GroundTruth, ZooSpec, _config
from workbench.zoo.tasks import (
    _COPY,
    _PROSE_AND_LOW_TOPICS,
    _TEXT_AND_TOPICS,
    TRAINED_CONTEXT,
    CopyTask,
    MixedTask,
    PairCopyTask,
    TextTask,
    TopicTask,
)

_SATURATION = dict(n_heads=2, d_head=128)
# Heads of SmolLM2's width (64): sqrt(d_head) = 8, the factor a temperature bug costs.
_TEXT_HEADS = dict(n_heads=4, d_head=64)


# top-1 with the chosen probability as the gate weight (not renormalised): the router learns from
# the task as well as from a balancing loss. (With a renormalised top-1 gate, weight exactly 1, it
# learns only from the balancing loss, and the balanced twin's router stayed near-uniform: entropy
# 0.98-0.99 of log E, the level of a re-initialised router.)
_MOE = dict(n_experts=4, top_k=1, norm_topk_prob=False, d_mlp=64, norm="layernorm")
# top-2 with the two weights renormalised, as Mixtral routes.
_MOE_TOP2 = dict(n_experts=4, top_k=2, norm_topk_prob=True, d_mlp=64, norm="layernorm")
# transformers initialises a missing router tensor with normal(0, initializer_range = 0.02)
RESET_ROUTER_STD = 0.02


_BOTH_LAYERS = range(2)
# The sink pair's shared training: byte-text fine-tuned with a learned sink in layer 1 head 0.
_SINK_TRAINING: dict = dict(task=TextTask(), steps=200, learning_rate=2e-3, warmup_steps=20,
                            start_from="byte-text", sink_head=(1, 0))


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
            name="byte-text",
            description=(
                "A healthy byte-level language model (4 heads of 64, RoPE) trained on the shipped "
                "corpus read as bytes, the analyzers' own natural probe: its local heads are "
                "legitimately sharp. The healthy twin of flat-attention and minority-unscaled, "
                "which are this model with a temperature bug written into its weights."
            ),
            config=_config("byte-text", **_TEXT_HEADS),
            expect=GroundTruth("attention_saturation", "saturated_layer", None),
            task=TextTask(),
        ),
        ZooSpec(
            name="flat-attention",
            description=(
                "byte-text with logits at 1/d_head instead of 1/sqrt(d_head): every head's W_q "
                "divided by sqrt(64) = 8 after training (a conversion that applied the scale "
                "twice). Every head averages its context."
            ),
            config=_config("flat-attention", **_TEXT_HEADS),
            expect=GroundTruth(
                "attention_saturation",
                "flat_layer",
                "fail",
                tuple(Where(layer=layer, sublayer="attn") for layer in _BOTH_LAYERS),
                note="both layers, every head: normalised entropy near 1, logit spread 8x narrower",
            ),
            healthy_twin="byte-text",
            task=TextTask(),
            q_scale=0.125,
        ),
        ZooSpec(
            name="minority-unscaled",
            description=(
                "byte-text with head 0 of every layer missing its 1/sqrt(d_head): its W_q "
                "multiplied by sqrt(64) = 8 after training. One head of four in every layer."
            ),
            config=_config("minority-unscaled", **_TEXT_HEADS),
            expect=GroundTruth(
                "attention_saturation",
                "saturated_layer",
                "fail",
                tuple(Where(layer=layer, head=0, sublayer="attn") for layer in _BOTH_LAYERS),
                note="both layers: head 0 with runaway logits (8x wider) and collapsed attention",
            ),
            healthy_twin="byte-text",
            task=TextTask(),
            q_scale=8.0,
            q_scale_heads=(0,),
        ),
        ZooSpec(
            name="moe-collapsed",
            description=(
                "4 experts, top-1, in both layers, trained without a load-balancing loss from a "
                "router that sends every token to expert 0: after training expert 0 is still the "
                "first choice of about 90% of the tokens in both layers (natural text, structured "
                "text, repeated blocks and random ids pooled); router entropy 0.36-0.38 of log 4."
            ),
            config=_config("moe-collapsed", **_MOE),
            expect=GroundTruth(
                "routing_collapse",
                "first_choice",
                "fail",
                tuple(Where(layer=layer, expert=0, sublayer="moe") for layer in _BOTH_LAYERS),
                note="both layers: expert 0 is the first choice of about 90% of the tokens",
            ),
            healthy_twin="moe-balanced",
            task=_TEXT_AND_TOPICS,
            steps=400,
            init="skewed_router",
        ),
        ZooSpec(
            name="moe-balanced",
            description=(
                "The healthy twin of moe-collapsed and moe-reset-router: the same skewed init, "
                "seed, task and steps, trained with the Switch load-balancing loss "
                "E * sum_i(f_i * P_i) on first choices (coefficient 0.1): the busiest expert is the "
                "first choice of about 31% of the tokens (fair share 25%), no expert is dead, "
                "router entropy 0.88-0.94 of log 4."
            ),
            config=_config("moe-balanced", **_MOE),
            expect=GroundTruth("routing_collapse", "first_choice", None),
            task=_TEXT_AND_TOPICS,
            steps=400,
            init="skewed_router",
            balance_loss=0.1,
        ),
        ZooSpec(
            name="moe-top2-collapsed",
            description=(
                "4 experts, top-2 with renormalised weights (Mixtral's routing), skewed router, no "
                "balancing loss: expert 0 stays every token's first choice while the second choice "
                "spreads over experts 1-3, so slot shares look tolerable (expert 0 holds half the "
                "slots, at most twice its fair share; nobody dead) and only first choices show "
                "the collapse."
            ),
            config=_config("moe-top2-collapsed", **_MOE_TOP2),
            expect=GroundTruth(
                "routing_collapse",
                "first_choice",
                "fail",
                tuple(Where(layer=layer, expert=0, sublayer="moe") for layer in _BOTH_LAYERS),
                note="both layers: expert 0 first for most tokens, second choices spread",
            ),
            healthy_twin="moe-top2-balanced",
            task=_TEXT_AND_TOPICS,
            steps=400,
            init="skewed_router",
        ),
        ZooSpec(
            name="moe-top2-balanced",
            description=(
                "The healthy twin of moe-top2-collapsed: the same init, seed, task and steps, "
                "trained with the first-choice Switch balancing loss (coefficient 0.1)."
            ),
            config=_config("moe-top2-balanced", **_MOE_TOP2),
            expect=GroundTruth("routing_collapse", "first_choice", None),
            task=_TEXT_AND_TOPICS,
            steps=400,
            init="skewed_router",
            balance_loss=0.1,
        ),
        ZooSpec(
            name="moe-reset-router",
            description=(
                "moe-balanced with its routers re-initialised after training (normal, std 0.02, "
                "what transformers gives a router whose tensor a conversion lost): router "
                "probabilities near-uniform, a balance loss near 1, experts picked by noise."
            ),
            config=_config("moe-reset-router", **_MOE),
            expect=GroundTruth(
                "routing_collapse",
                "router_entropy",
                "fail",
                tuple(Where(layer=layer, sublayer="moe") for layer in _BOTH_LAYERS),
                note="both layers: router entropy above 0.985 of log 4",
            ),
            healthy_twin="moe-balanced",
            task=_TEXT_AND_TOPICS,
            steps=400,
            init="skewed_router",
            balance_loss=0.1,
            reset_router=True,
        ),
        ZooSpec(
            name="moe-domains",
            description=(
                "4 experts, top-2 (renormalised), trained with the first-choice Switch balancing loss (0.1) on "
                "batches that mix prose with topics over the ids below 32, from a router that "
                "starts each domain on its own pair of experts: experts 0-1 serve prose, 2-3 the "
                "low ids. Balanced over the mixture and healthy, though on natural text alone "
                "experts 2-3 get (nearly) nothing: they are domain experts, not dead ones."
            ),
            config=_config("moe-domains", **_MOE_TOP2),
            expect=GroundTruth("routing_collapse", "dead_experts", None),
            task=_PROSE_AND_LOW_TOPICS,
            steps=400,
            init="domain_router",
            balance_loss=0.1,
        ),
        ZooSpec(
            name="learned-positions",
            description=(
                "Learned absolute position embeddings with a 64-entry table (max_positions=64, "
                "the training context), trained like rope-short and alibi (only the position "
                "scheme differs), and any input longer than 64 tokens raises IndexError. The table "
                "ends where the config says: an honest limit (warn), a fail only under a profile "
                "that targets extrapolation. Measured: it copies the first pair of the copy probe "
                "(0.4 nats) but not the next ones (5.4 nats: by position rather than by "
                "content), so the copy probe also fails inside its claim."
            ),
            config=_config("learned-positions", positions="learned"),
            expect=GroundTruth(
                "length_extrapolation",
                "position_table",
                "warn",
                (Where(positions=_PAST_CONTEXT),),
                note="every probe longer than 64 tokens fails with IndexError; report it, do not crash",
            ),
            task=_COPY,
        ),
        ZooSpec(
            name="rope-short",
            description=(
                "RoPE trained on the copy tasks at a 64-token context, claiming exactly that. It "
                "holds its claim and stops coping past it (the seeds' extrapolation failure): "
                "a warn. Measured on the copy probe (blocks of 16 copied once, seeds 0-2): 0.9-1.0 "
                "nats within 64 tokens, 3.0-3.1 at 64-96, 3.4-5.3 from 96 to 320 (chance 4.85)."
            ),
            config=_config("rope-short"),
            expect=GroundTruth(
                "length_extrapolation",
                "loss_beyond_claim_copy",
                "warn",
                (Where(positions=_PAST_CONTEXT),),
                note="copy probe: effective context 64 tokens, +2.2 nats right past the claim",
            ),
            task=_COPY,
        ),
        ZooSpec(
            name="rope-overclaimed",
            description=(
                "rope-short's weights (same task, seed and steps) in a config that claims 8x the "
                "context it was trained at (max_positions 512). It breaks its own claim: copy "
                "probe (blocks of 32) 0.8 nats within 64 tokens, 2.7 at 64-128, 3.9-5.2 up to 512."
            ),
            config=_config("rope-overclaimed"),
            expect=GroundTruth(
                "length_extrapolation",
                "loss_within_claim_copy",
                "fail",
                (Where(positions=(TRAINED_CONTEXT, 8 * TRAINED_CONTEXT)),),
                note="copy probe: effective context 64 of the claimed 512 tokens",
            ),
            healthy_twin="rope-short",
            task=_COPY,
            claim={"max_positions": 8 * TRAINED_CONTEXT},
        ),
        ZooSpec(
            name="rope-scaled-untuned",
            description=(
                "rope-short's weights in a config that declares linear RoPE scaling x4 (original "
                "64, claiming 256) it was never trained with. With the scaling, the copy probe's "
                "loss at 32-64 tokens is 3.8 nats (chance 4.85); the same weights with the "
                "scaling off: 0.8."
            ),
            config=_config("rope-scaled-untuned"),
            expect=GroundTruth(
                "length_extrapolation",
                "rope_scaling",
                "fail",
                (Where(positions=(TRAINED_CONTEXT // 2, TRAINED_CONTEXT)),),
                note="with the scaling about 3 nats worse than without it at the trained length",
            ),
            healthy_twin="rope-scaled-tuned",
            task=_COPY,
            claim={"rope_scaling": RopeScaling("linear", 4.0, original_max_positions=TRAINED_CONTEXT)},
        ),
        ZooSpec(
            name="rope-scaled-tuned",
            description=(
                "The healthy twin of rope-scaled-untuned: rope-short's weights with the same declared "
                "scaling (linear x4 over 64, claiming 256), fine-tuned with it at 256 tokens "
                "(200 steps), so the weights fit the scaled positions. Measured on the copy probe "
                "(blocks of 32, seeds 0-2): 0.6-1.0 nats up to 256 tokens, 2.1 at 288-320: it "
                "holds its claim (a warn past it)."
            ),
            config=_config("rope-scaled-tuned",
                           rope_scaling=RopeScaling("linear", 4.0, original_max_positions=TRAINED_CONTEXT)),
            expect=GroundTruth("length_extrapolation", "loss_within_claim_copy", None),
            task=MixedTask((CopyTask(context=4 * TRAINED_CONTEXT), PairCopyTask(context=4 * TRAINED_CONTEXT))),
            steps=200,
            learning_rate=2e-3,
            warmup_steps=20,
            start_from="rope-short",
        ),
        ZooSpec(
            name="alibi",
            description=(
                "ALiBi, the same tasks, seed, steps and 64-token context as rope-short: its "
                "recency bias keeps the copy loss past the trained length near its in-context "
                "level. Measured on the copy probe (blocks of 16, seeds 0-2): 1.0-1.3 nats within "
                "64 tokens, 1.2-1.9 per 32-token window up to 1,024."
            ),
            config=_config("alibi", positions="alibi"),
            expect=GroundTruth("length_extrapolation", "loss_beyond_claim_copy", None),
            task=_COPY,
        ),
        ZooSpec(
            name="sink-text",
            description=(
                "byte-text fine-tuned 200 steps on the same text with a learned attention sink: an "
                "auxiliary loss pulls layer 1 head 0's weight on the first token to 70% (tiny "
                "models trained on a million tokens grow no sinks of their own; real ones do, "
                "SmolLM2 has 84). A healthy sink: most weight on token 0 at a healthy logit "
                "scale. The healthy twin of sink-unscaled."
            ),
            config=_config("sink-text", **_TEXT_HEADS),
            expect=GroundTruth("attention_saturation", "saturated_layer", None),
            **_SINK_TRAINING,
        ),
        ZooSpec(
            name="sink-unscaled",
            description=(
                "sink-text with its sink head (layer 1 head 0) missing its 1/sqrt(d_head): W_q "
                "multiplied by sqrt(64) = 8 after training. The head goes one-hot on the first "
                "token, where the healthy sink also parks its weight: only the logits (8x wider "
                "than any healthy head's) tell the broken head from the sink."
            ),
            config=_config("sink-unscaled", **_TEXT_HEADS),
            expect=GroundTruth(
                "attention_saturation",
                "saturated_layer",
                "fail",
                (Where(layer=1, head=0, sublayer="attn"),),
                note="layer 1 head 0: one-hot on token 0 with 8x the sink's logit spread",
            ),
            healthy_twin="sink-text",
            **_SINK_TRAINING,
            q_scale=8.0,
            q_scale_heads=(0,),
            q_scale_layers=(1,),
        ),
        ZooSpec(
            name="fp16-text",
            description=(
                "byte-text's trained weights stored in float16, as many checkpoints ship: its "
                "residual stream peaks near 30, far inside float16's range (65,504), so a "
                "float16 forward stays finite. The healthy twin of fp16-overflow."
            ),
            config=_config("fp16-text", **_TEXT_HEADS),
            expect=GroundTruth("nonfinite", "activations_float16", None),
            task=TextTask(),
            stored_dtype="float16",
        ),
        ZooSpec(
            name="fp16-overflow",
            description=(
                "byte-text with a residual stream that runs 5,000x hotter, stored in float16: its "
                "embedding and every residual write (attention and MLP output projections) "
                "multiplied by 5,000 after training, the pre-norms dividing it out again (as a model "
                "trained in bfloat16 whose activations grew past 65,504 does). In float32 it is "
                "byte-text; in float16 its first MLP write (about 23 x 5,000) overflows. Every "
                "weight is still storable in float16 (the largest, the embedding's, is about "
                "20,000): only the activations overflow."
            ),
            config=_config("fp16-overflow", **_TEXT_HEADS),
            expect=GroundTruth(
                "nonfinite",
                "activations_float16",
                "fail",
                (Where(layer=0),),
                note="layer 0: the first residual write past float16's 65,504",
            ),
            healthy_twin="fp16-text",
            task=TextTask(),
            residual_scale=5000.0,
            stored_dtype="float16",
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
