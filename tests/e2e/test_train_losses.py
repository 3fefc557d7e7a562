"""CISPO, SAPO and the entropy bonus end to end through ``scripts/train.py`` on CPU (two short
runs): the presets train, their loss metrics are finite and logged, and ``--entropy_coef``
logs ``policy/entropy_bonus``. The formulas themselves: ``tests/unit/losses/test_cispo_sapo.py`` and
``tests/unit/losses/test_entropy_bonus.py`` (float64 references)."""

from __future__ import annotations

import math

import pytest
from helpers.train_run import SMALL, _train, _where

from strace_ds.train.monitor import read_history

pytestmark = pytest.mark.slow

LOSS_METRICS = ("policy/loss", "policy/grad_norm", "policy/clip_frac_low",
                "policy/clip_frac_high", "trace/ratio_mean", "policy/approx_kl")  # fmt: skip


def _run(tiny_policy, tmp_path, name: str, *extra: str) -> list[dict]:
    args = [*_where(tiny_policy), "--run_name", name, "--eval_every", "-1", "--export", "false",
            *SMALL, "--image_every", "0", "--sample_every", "0", *extra]  # fmt: skip
    args[args.index("--steps") + 1] = "2"
    _train(args, cwd=tmp_path)
    history = read_history(tmp_path / "out" / name)  # metrics.jsonl: one line per step
    assert len(history) == 2
    for h in history:
        for k in LOSS_METRICS:
            assert math.isfinite(h[k]), (name, k, h[k])
        assert h["policy/grad_norm"] > 0
    return history


def test_cispo_with_the_entropy_bonus_trains(tiny_policy, tmp_path):
    history = _run(tiny_policy, tmp_path, "cispo", "--loss", "cispo", "--entropy_coef", "0.01")
    for h in history:
        # 0.01 x the mean entropy of the loss tokens: positive and finite
        assert 0 < h["policy/entropy_bonus"] < 0.01 * 20
        assert h["policy/entropy_bonus"] == pytest.approx(0.01 * h["policy/entropy_mean"],
                                                          rel=0.5)  # fmt: skip


def test_sapo_trains_without_a_bonus(tiny_policy, tmp_path):
    history = _run(tiny_policy, tmp_path, "sapo", "--loss", "sapo", "--sapo_tau_neg", "1.1")
    assert all("policy/entropy_bonus" not in h for h in history)
