"""The length members: learned positions, RoPE and ALiBi trained at a 64-token context, and RoPE
weights whose config claims more than they were trained for (a longer context, a RoPE scaling)."""

from __future__ import annotations

from workbench.config import RopeScaling
from workbench.findings import Where
from workbench.zoo.recipe import GroundTruth, ZooSpec, _config
from workbench.zoo.tasks import _COPY, TRAINED_CONTEXT, CopyTask, MixedTask, PairCopyTask

_PAST_CONTEXT = (TRAINED_CONTEXT, 8 * TRAINED_CONTEXT)

SPECS: tuple[ZooSpec, ...] = (
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
)
