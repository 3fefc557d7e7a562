"""DAPO dynamic sampling through ``scripts/train.py``: silent groups are re-drawn up to the cap
and the draws are reported per step."""

from __future__ import annotations

import pytest
from helpers.train_run import SMALL, _history, _train, _where

pytestmark = pytest.mark.slow


def test_re_sampling_reports_draws_and_leaves_no_silent_group_below_the_cap(tiny_policy,
                                                                            tmp_path):
    args = [*_where(tiny_policy), "--run_name", "dapo", "--eval_every", "-1", "--export", "false",
            "--loss", "grpo", *SMALL, "--filter_zero_variance", "true",
            "--max_sampling_draws", "4"]  # fmt: skip
    _train(args, cwd=tmp_path)
    history = _history(tmp_path / "out" / "dapo")
    assert len(history) == 3
    for h in history:
        assert 1 <= h["rollout/draws_mean"] <= h["rollout/draws_max"] <= 4
        # either every group is informative, or the cap was reached
        assert h["advantage/zero_variance_frac"] == 0 or h["rollout/draws_max"] == 4
    # the tiny policy answers ~28% right: with 4 answers a group is all wrong ~27% of the time,
    # so across 3 steps of 8 prompts at least one re-draw happened
    assert max(h["rollout/draws_max"] for h in history) > 1
