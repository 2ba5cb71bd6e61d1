"""The zoo: tiny checkpoints with known pathologies, and their healthy twins.

Each member is a small decoder (2 layers, d_model 64, vocabulary 128) trained on CPU from a fixed
seed in seconds (the longest, about 20) on a synthetic task, and saved as a workbench checkpoint
(``workbench.json`` + ``model.safetensors``, plus ``zoo.json`` saying how it was made). They
are the analyzers' ground truth: each pathological member has a healthy twin that differs only
in the cause of the pathology, and :func:`ground_truth` says which analyzer must flag what, where.

Tasks: :class:`CopyTask` (repeated random blocks; only the repeats carry loss, so the model
must copy from context) mixed with :class:`PairCopyTask` (blocks copied once) for the length
members; :class:`TopicTask` (bags of tokens, best solved by attending broadly, so a healthy model
has no reason for one-hot heads) for the first saturation pair; :class:`TextTask` (the shipped
corpus as bytes) for the byte-text family (temperature bugs, the sink pair, the float16 pair),
mixed with topics for the MoE members. Every member's description gives the numbers measured on it (seed 0).

Determinism: ``build(name, folder, seed=s)`` seeds the global RNG for the weight init inside
``torch.random.fork_rng`` (the caller's RNG state is untouched) and draws data from its own
``torch.Generator``; twins share the seed, so they start from the same weights and see the same
batches. Training runs on ``TRAINING_THREADS`` threads, the caller's setting restored after.

Modules: :mod:`~workbench.zoo.tasks` (training tasks), :mod:`~workbench.zoo.members` (the members
by analyzer, with their ground truth), :mod:`~workbench.zoo.specs` (the one table of them),
:mod:`~workbench.zoo.training` (the loop), :mod:`~workbench.zoo.build` (train and save).
"""

from workbench.zoo.build import ZOO_FILE, BuildProgress, build, build_all
from workbench.zoo.recipe import GroundTruth, ZooSpec
from workbench.zoo.specs import MEMBERS, ground_truth
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
