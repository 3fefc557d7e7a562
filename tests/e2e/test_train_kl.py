"""KL to the frozen reference policy through ``scripts/train.py`` (``--kl_coef``): the reference
is loaded only for beta > 0, its KL is logged, zero while the policy is the reference, and it
enters the loss or the reward. The estimators themselves: ``tests/unit/losses/test_kl.py``
(float64)."""

from __future__ import annotations

import pytest
from helpers.train_run import SMALL, _history, _train, _where

pytestmark = pytest.mark.slow


def _run(tiny_policy, tmp_path, name: str, *extra: str):
    args = [*_where(tiny_policy), "--run_name", name, "--eval_every", "-1", "--export", "false",
            "--loss", "grpo", *SMALL, *extra]  # fmt: skip
    args[args.index("--steps") + 1] = "2"
    proc = _train(args, cwd=tmp_path)
    return _history(tmp_path / "out" / name), proc.stdout + proc.stderr


@pytest.mark.parametrize("where,estimator", [("loss", "k3"), ("reward", "k1")])
def test_kl_to_the_reference(tiny_policy, tmp_path, where, estimator):
    history, said = _run(tiny_policy, tmp_path, where, "--kl_coef", "0.5", "--kl_in", where,
                         "--kl_estimator", estimator)
    assert f"reference policy: {tiny_policy}, frozen (ZeRO stage 3)" in said
    first, second = (h["policy/kl_ref"] for h in history)
    if where == "reward":  # scored before any update: the policy *is* the reference
        assert abs(first) < 1e-6
    else:  # averaged over the step's updates: the second moved away from the reference
        assert 0 <= first < second
    assert abs(second) > 1e-5


def test_no_kl_coef_loads_no_reference(tiny_policy, tmp_path):
    history, said = _run(tiny_policy, tmp_path, "plain", "--kl_estimator", "k2")
    assert "reference policy" not in said
    assert all("policy/kl_ref" not in h for h in history)
