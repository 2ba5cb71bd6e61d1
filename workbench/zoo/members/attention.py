"""The attention members: temperature bugs (too sharp, too flat, in a minority of heads, in a sink
head) written into trained weights, each beside its healthy twin."""

from __future__ import annotations

from workbench.findings import Where
from workbench.zoo.recipe import _BOTH_LAYERS, GroundTruth, ZooSpec, _config
from workbench.zoo.tasks import TextTask, TopicTask

_SATURATION = dict(n_heads=2, d_head=128)
# Heads of SmolLM2's width (64): sqrt(d_head) = 8, the factor a temperature bug costs.
TEXT_HEADS = dict(n_heads=4, d_head=64)
# The sink pair's shared training: byte-text fine-tuned with a learned sink in layer 1 head 0.
_SINK_TRAINING: dict = dict(task=TextTask(), steps=200, learning_rate=2e-3, warmup_steps=20,
                            start_from="byte-text", sink_head=(1, 0))

SPECS: tuple[ZooSpec, ...] = (
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
        config=_config("byte-text", **TEXT_HEADS),
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
        config=_config("flat-attention", **TEXT_HEADS),
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
        config=_config("minority-unscaled", **TEXT_HEADS),
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
        name="sink-text",
        description=(
            "byte-text fine-tuned 200 steps on the same text with a learned attention sink: an "
            "auxiliary loss pulls layer 1 head 0's weight on the first token to 70% (tiny "
            "models trained on a million tokens grow no sinks of their own; real ones do, "
            "SmolLM2 has 84). A healthy sink: most weight on token 0 at a healthy logit "
            "scale. The healthy twin of sink-unscaled."
        ),
        config=_config("sink-text", **TEXT_HEADS),
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
        config=_config("sink-unscaled", **TEXT_HEADS),
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
)
