"""The routing members: MoEs collapsed (top-1 and top-2), balanced, with a re-initialised router,
and with healthy domain experts."""

from __future__ import annotations

from workbench.findings import Where
from workbench.zoo.recipe import _BOTH_LAYERS, GroundTruth, ZooSpec, _config
from workbench.zoo.tasks import _PROSE_AND_LOW_TOPICS, _TEXT_AND_TOPICS

# top-1 with the chosen probability as the gate weight (not renormalised): the router learns from
# the task as well as from a balancing loss. (With a renormalised top-1 gate, weight exactly 1, it
# learns only from the balancing loss, and the balanced twin's router stayed near-uniform: entropy
# 0.98-0.99 of log E, the level of a re-initialised router.)
_MOE = dict(n_experts=4, top_k=1, norm_topk_prob=False, d_mlp=64, norm="layernorm")
# top-2 with the two weights renormalised, as Mixtral routes.
_MOE_TOP2 = dict(n_experts=4, top_k=2, norm_topk_prob=True, d_mlp=64, norm="layernorm")

SPECS: tuple[ZooSpec, ...] = (
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
)
