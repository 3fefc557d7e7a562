"""Typed configuration of a training run: one dataclass per component, validated at start-up.

A run is a :class:`TrainConfig` made of sections, each a dataclass that owns its fields, their
one-line ``help`` (also the CLI's help text) and its validation (:mod:`.sections`):

* ``data`` (:class:`DataConfig`): the policy and the training prompts;
* ``eval`` (:class:`EvalConfig`): the held-out evaluation;
* ``rollouts`` (:class:`RolloutConfig`): the rollout engine and how answers are sampled;
* ``objective`` (:class:`ObjectiveConfig`): the loss preset and its overrides (one per
  :class:`~strace_ds.losses.TraceConfig` field), advantages, off-policy corrections, KL;
* ``optim`` (:class:`OptimConfig`): steps, batching and the optimizer;
* ``rewards`` (:class:`RewardConfig`): rewards, grading workers and their failure limits;
* ``run`` (:class:`RunConfig`): DeepSpeed, seed, names, directories, checkpoints, logs.

Field names are unique across sections, so everything also reads flat: ``cfg.lr`` is
``cfg.optim.lr``, ``TrainConfig(lr=1e-4)`` sets it, ``--lr`` and ``--optim.lr`` are the same
flag, and a YAML/JSON file may nest (``optim: {lr: 1e-4}``), stay flat (``lr: 1e-4``) or mix.
The CLI (``scripts/train.py``), files (``--config run.yaml``) and notebooks all build the same
object; validation names the field and the fix.

Where things are: the sections in :mod:`.sections` (what a user reads), how a field is declared
and type-checked in :mod:`.fields`, mappings/files/flags to fields in :mod:`.parse`, and the
composition in :mod:`.train_config`.
"""

from strace_ds.config.sections import (
    ADVANTAGE_METHODS,
    FIELD_SECTIONS,
    OLD_LOGPROBS,
    OVERLONG_MODES,
    SECTIONS,
    TRACE_OVERRIDES,
    DataConfig,
    EvalConfig,
    ObjectiveConfig,
    OptimConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
)
from strace_ds.config.train_config import TrainConfig

__all__ = [
    "ADVANTAGE_METHODS",
    "FIELD_SECTIONS",
    "OLD_LOGPROBS",
    "OVERLONG_MODES",
    "SECTIONS",
    "TRACE_OVERRIDES",
    "DataConfig",
    "EvalConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "TrainConfig",
]
