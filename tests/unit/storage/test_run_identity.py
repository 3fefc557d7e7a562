"""A resume that would change the run's identity is refused, naming the fields."""

from __future__ import annotations

import pytest

from strace_ds.config import TrainConfig
from strace_ds.storage.run_identity import check_identity, run_identity


def test_unchanged_or_free_fields_pass():
    saved = run_identity(TrainConfig(), 1)
    longer = TrainConfig(steps=60, lr=1e-5, eval_every=5)
    assert check_identity(saved, run_identity(longer, 1)) == []
    assert check_identity(None, run_identity(TrainConfig(loss="grpo"), 2)) == []  # old checkpoint


def test_changed_identity_is_refused_with_every_field_named():
    saved = run_identity(TrainConfig(), 1)
    now = run_identity(TrainConfig(loss="grpo", seed=3, prompts_per_step=16), 1)
    with pytest.raises(ValueError) as err:
        check_identity(saved, now)
    text = str(err.value)
    for part in ("loss: 's_trace' -> 'grpo'", "seed: 0 -> 3", "prompts_per_step: 32 -> 16",
                 "trace.lam: 0.95 -> 0.0", "--resume_override "):  # fmt: skip
        assert part in text, part
    assert "\n" not in text


def test_override_lets_named_fields_through_but_never_the_world_size():
    saved = run_identity(TrainConfig(), 1)
    now = run_identity(TrainConfig(loss="grpo"), 1)
    changed = check_identity(saved, now, overrides=("loss",))
    assert "loss: 's_trace' -> 'grpo'" in changed and any(c.startswith("trace.") for c in changed)
    with pytest.raises(ValueError, match=r"world_size: 1 -> 2; world_size must match .*relaunch "
                       r"on 1 ranks"):  # fmt: skip
        check_identity(saved, run_identity(TrainConfig(), 2), overrides=("world_size",))
    only_lam = run_identity(TrainConfig(lam=0.5), 1)
    assert check_identity(saved, only_lam, overrides=("lam",)) == ["trace.lam: 0.95 -> 0.5"]


def test_resume_override_names_are_checked_at_start_up():
    assert TrainConfig(resume_override="loss,seed,lam").resume_override == "loss,seed,lam"
    with pytest.raises(ValueError, match="resume_override must be one of .*; got 'world_size'"):
        TrainConfig(resume_override="loss,world_size")
