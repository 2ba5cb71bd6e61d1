"""The precision members: a checkpoint stored in float16 whose activations overflow float16, and its
twin that does not."""

from __future__ import annotations

from workbench.findings import Where
from workbench.zoo.members.attention import TEXT_HEADS
from workbench.zoo.recipe import GroundTruth, ZooSpec, _config
from workbench.zoo.tasks import TextTask

SPECS: tuple[ZooSpec, ...] = (
    ZooSpec(
        name="fp16-text",
        description=(
            "byte-text's trained weights stored in float16, as many checkpoints ship: its "
            "residual stream peaks near 30, far inside float16's range (65,504), so a "
            "float16 forward stays finite. The healthy twin of fp16-overflow."
        ),
        config=_config("fp16-text", **TEXT_HEADS),
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
        config=_config("fp16-overflow", **TEXT_HEADS),
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
