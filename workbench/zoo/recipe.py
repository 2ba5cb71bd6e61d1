"""What a zoo member is: its spec (config, task, training recipe) and its ground truth (what must be
flagged where). :mod:`workbench.zoo.specs` lists the members."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from workbench.config import DecoderConfig
from workbench.findings import Where
from workbench.zoo.tasks import TRAINED_CONTEXT, VOCAB_SIZE, CopyTask, Task

InitKind = Literal["default", "unit_qk", "skewed_router", "domain_router"]


@dataclass(frozen=True)
class GroundTruth:
    """What an analyzer must report for a member.

    ``analyzer`` and ``check`` are the names the analyzer gives its findings
    (``Finding.analyzer``, ``Finding.check``). ``status`` is "fail" for a pathological member,
    "warn" for an honest limit a user must know (a context that ends where the config says),
    and None for a healthy one (no finding of that check may fail). ``where`` lists the places the
    failing findings point at: the fields that are set must match (for length findings, the
    range starts at the trained context; its end is the probe's length). ``note`` says by how much.
    """

    analyzer: str
    check: str
    status: Literal["fail", "warn"] | None
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
    # A temperature bug written into the trained weights: W_q rows of these heads (None: all) in
    # every layer times q_scale, which multiplies their logits by exactly q_scale (RoPE rotates
    # within a head). 1.0 = none.
    q_scale: float = 1.0
    q_scale_heads: tuple[int, ...] | None = None
    q_scale_layers: tuple[int, ...] | None = None  # None: every layer
    # A learned attention sink (StreamingLLM trains one in): while training, an auxiliary loss
    # (coefficient 1) pulls the mean first-token weight of head ``sink_head = (layer, head)``,
    # over queries that see at least 9 keys, to ``sink_mass``.
    sink_head: tuple[int, int] | None = None
    sink_mass: float = 0.7
    # config changes written into the saved checkpoint only: a claim the training never saw
    claim: dict[str, object] = field(default_factory=dict)
    start_from: str | None = None  # fine-tune this member's trained weights (same shapes)
    reset_router: bool = False  # after training, re-initialise every router (a lost gate tensor)
    # After training: the embedding and every write to the residual stream times residual_scale,
    # so the stream runs that much hotter; pre-norms make the function the same (1.0 = none).
    residual_scale: float = 1.0
    stored_dtype: str = "float32"  # the dtype the checkpoint's tensors are saved in


_BOTH_LAYERS = range(2)  # every layer of the base shape below


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
