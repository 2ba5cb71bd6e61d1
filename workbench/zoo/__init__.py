"""The zoo: tiny checkpoints with known pathologies, and their healthy twins.

Each member is a small decoder (2 layers, d_model 64, vocabulary 128) trained on CPU from a fixed
seed in about 10-20 seconds on a synthetic task, and saved as a workbench checkpoint
(``workbench.json`` + ``model.safetensors``, plus ``zoo.json`` saying how it was made). They
are the analyzers' ground truth: each pathological member has a healthy twin that differs only
in the cause of the pathology, and :func:`ground_truth` says which analyzer must flag what, where.

===================  ===========================================================  =================
member               pathology (analyzer that must flag it)                       healthy twin
===================  ===========================================================  =================
unscaled-attention   q.k not divided by sqrt(d_head): every head near one-hot     scaled-attention
                     (attention_saturation)
moe-collapsed        no load-balancing loss, skewed router: expert 0 takes        moe-balanced
                     every token, the other experts are dead (routing_collapse)
learned-positions    a 64-entry learned position table ending where the config    (none)
                     says: an honest limit, warn (length_extrapolation)
rope-short           RoPE trained at 64 tokens, claiming 64: holds its claim and  alibi
                     stops coping past it, warn (length_extrapolation)
rope-overclaimed     rope-short's weights claiming 512 tokens: breaks its claim   rope-short
                     (length_extrapolation)
rope-scaled-untuned  rope-short's weights declaring linear RoPE scaling x4 it     rope-scaled-tuned
                     was never trained with (length_extrapolation)
flat-attention       byte-text with W_q divided by sqrt(d_head) after training:   byte-text
                     logits at 1/d_head, every head flat (attention_saturation)
minority-unscaled    byte-text with head 0 of each layer missing 1/sqrt(d_head)   byte-text
                     (W_q times 8): runaway logits in 1 of 4 heads per layer
                     (attention_saturation)
===================  ===========================================================  =================

Tasks: :class:`CopyTask` (repeated random blocks; only the repeats carry loss, so the model
must copy from context) mixed with :class:`PairCopyTask` (blocks copied once) for the length
members; :class:`TopicTask` (bags of tokens, best
solved by attending broadly, so a healthy model has no reason for one-hot heads) for the
saturation pair; :class:`TextTask` (the shipped corpus as bytes) mixed with topics for the MoE
pair. Every member's description gives the numbers measured on it (seed 0).

Determinism: ``build(name, folder, seed=s)`` seeds the global RNG for the weight init inside
``torch.random.fork_rng`` (the caller's RNG state is untouched) and draws data from its own
``torch.Generator``; twins share the seed, so they start from the same weights and see the same
batches. Training runs on ``TRAINING_THREADS`` threads, the caller's setting restored after.

Modules: :mod:`~workbench.zoo.tasks` (training tasks), :mod:`~workbench.zoo.specs` (the members
and their ground truth), :mod:`~workbench.zoo.training` (the loop), :mod:`~workbench.zoo.build`
(train and save).
"""

from workbench.zoo.build import ZOO_FILE, BuildProgress, build, build_all
from workbench.zoo.specs import MEMBERS, GroundTruth, ZooSpec, ground_truth
from workbench.zoo.tasks import (
    TRAINED_CONTEXT,
    VOCAB_SIZE,
    CopyTask,
    MixedTask,
    PairCopyTask,
    TextTask,
    TopicTask,
)
from workbench.zoo.training import TRAINING_THREADS, _balance_loss

__all__ = [
    "MEMBERS",
    "TRAINED_CONTEXT",
    "TRAINING_THREADS",
    "VOCAB_SIZE",
    "ZOO_FILE",
    "BuildProgress",
    "CopyTask",
    "GroundTruth",
    "MixedTask",
    "PairCopyTask",
    "TextTask",
    "TopicTask",
    "ZooSpec",
    "_balance_loss",
    "build",
    "build_all",
    "ground_truth",
]
