"""``--old_logprobs auto``: the rollout's log-probs are the proximal ones only where they are
the trainer's to rounding (the update's equality: ``tests/e2e/test_update_invariance.py``)."""

from __future__ import annotations

import pytest
import torch

from strace_ds.config import TrainConfig
from strace_ds.train.updater import resolve_old_logprobs

F32, BF16 = torch.float32, torch.bfloat16


def _resolve(in_process=True, rollout_dtype=F32, policy_dtype=F32, **overrides):
    cfg = TrainConfig(**overrides)
    return resolve_old_logprobs(cfg.objective, cfg.rollouts, in_process, rollout_dtype,
                                policy_dtype)  # fmt: skip


def test_the_main_command_takes_the_rollout_logprobs_for_grpo() -> None:
    assert TrainConfig().old_logprobs == "auto"
    choice, why = _resolve(loss="grpo")
    assert choice == "rollout" and why.startswith("auto: rollout"), why


@pytest.mark.parametrize(
    ("kwargs", "because"),
    [
        (dict(in_process=False), "not the in-process one"),
        (dict(max_staleness=1), "stale"),
        (dict(rollout_dtype=BF16), "float32"),
        (dict(policy_dtype=BF16), "float32"),
        (dict(rollout_dtype=None), "float32"),  # an engine that does not say
        (dict(loss="s_trace"), "entropy"),
        (dict(behaviour_correction="token"), "behaviour correction"),
    ],
)
def test_anything_that_breaks_the_equality_keeps_the_trainers(kwargs, because) -> None:
    choice, why = _resolve(**{"loss": "grpo", **kwargs})
    assert choice == "trainer" and because in why, why


@pytest.mark.parametrize("choice", ["trainer", "rollout"])
def test_an_explicit_choice_is_kept(choice) -> None:
    assert _resolve(loss="s_trace", in_process=False, old_logprobs=choice)[0] == choice
