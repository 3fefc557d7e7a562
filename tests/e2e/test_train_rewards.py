"""Bring-your-own rewards through ``scripts/train.py``: a user function from a module of its
own, weighted with math-verify, trains and is logged per reward; a missing one stops the start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers.train_run import SMALL, TRAIN, _env, _history, _train, _where

pytestmark = pytest.mark.slow


def test_a_user_reward_trains_and_is_logged_per_reward(tiny_policy, tmp_path, monkeypatch):
    tests_dir = os.path.join(os.path.dirname(__file__), os.pardir, "helpers")  # user_rewards.py
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests_dir,
                                                                   os.environ.get("PYTHONPATH")])))
    args = [*_where(tiny_policy), "--run_name", "mine", "--eval_every", "-1", "--export", "false",
            "--reward", "math_verify,user_rewards:length_penalty:0.5", *SMALL]  # fmt: skip
    args[args.index("--steps") + 1] = "2"
    _train(args, cwd=tmp_path)
    history = _history(tmp_path / "out" / "mine")
    assert len(history) == 2
    for h in history:
        assert h["reward/length_penalty"] < 0  # minus the length / 100 characters
        assert h["reward/mean"] == pytest.approx(
            h["reward/math_verify"] + 0.5 * h["reward/length_penalty"], abs=1e-6)
        assert h["reward/accuracy"] == pytest.approx(h["reward/math_verify"])
        assert h["reward/errors"] == 0


def test_a_reward_that_cannot_be_imported_is_a_start_up_error(tiny_policy, tmp_path):
    cmd = [sys.executable, str(TRAIN), *_where(tiny_policy), "--reward",
           "math_verify,no_such_module_here:score", *SMALL]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--reward: reward 'no_such_module_here:score' cannot be used" in proc.stderr
    assert "Traceback" not in proc.stderr[-2000:], proc.stderr[-2000:]


def test_a_trl_shaped_and_a_remote_reward_train_through_the_script(tiny_policy, tmp_path,
                                                                   monkeypatch):
    from helpers.reward_server import serve

    tests_dir = os.path.join(os.path.dirname(__file__), os.pardir, "helpers")  # user_rewards.py
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests_dir,
                                                                   os.environ.get("PYTHONPATH")])))
    with serve("ok") as (url, seen):
        args = [*_where(tiny_policy), "--run_name", "elsewhere", "--eval_every", "-1",
                "--export", "false", "--reward",
                f"user_rewards:trl_contains_answer,{url}:0.5", *SMALL]  # fmt: skip
        args[args.index("--steps") + 1] = "2"
        _train(args, cwd=tmp_path)
    history = _history(tmp_path / "out" / "elsewhere")
    assert len(history) == 2
    assert len(seen) == 1 + 2  # the start-up probe, then one POST per step (one rank)
    assert len(seen[1]["responses"]) == 8 * 4 and seen[1]["prompts"][0]
    for h in history:
        assert h["reward/errors"] == 0 and h["reward/timeouts"] == 0
        assert h["reward/mean"] == pytest.approx(
            h["reward/trl_contains_answer"] + 0.5 * h["reward/score"], abs=1e-6)
        # Neither term is math-verify: it is graded alongside at weight 0 for the accuracy.
        assert h["reward/accuracy"] == pytest.approx(h["reward/math_verify"])
