"""Asynchronous training (``--max_staleness K``) end to end through ``scripts/train.py``: the
staleness of every step, a resume with answers in flight that is exact, and K = 0 unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.train_run import SMALL, _comparable, _history, _train, _where

pytestmark = pytest.mark.slow


def _common(policy_dir: Path, *extra: str) -> list[str]:
    args = [*_where(policy_dir), "--loss", "s_trace", "--eval_every", "-1", "--export", "false",
            "--image_every", "0", *SMALL, *extra]  # fmt: skip
    args[args.index("--steps") + 1] = "4"
    return args


def test_async_run_resumes_exactly_with_answers_in_flight(tiny_policy, tmp_path):
    common = _common(tiny_policy, "--max_staleness", "1")
    _train([*common, "--run_name", "straight"], cwd=tmp_path)
    _train([*common, "--run_name", "split", "--stop_after", "2"], cwd=tmp_path)
    ckpt = tmp_path / "out" / "split" / "checkpoints" / "step_000002"
    inflight = torch.load(ckpt / "inflight-rank0.pt", weights_only=False)
    # Step 3 (made by version 1), and step 4 when the producer had already started it.
    assert [e["step"] for e in inflight] in ([3], [3, 4])
    assert [e["weight_version"] for e in inflight] == [e["step"] - 2 for e in inflight]
    _train([*common, "--run_name", "split", "--resume", "auto"], cwd=tmp_path)
    straight = _history(tmp_path / "out" / "straight")
    assert [h["rollout/staleness_max"] for h in straight] == [0.0, 1.0, 1.0, 1.0]
    assert all(h["perf/trainer_idle_s"] >= 0 and h["perf/generator_idle_s"] >= 0
               for h in straight)  # fmt: skip
    split = _history(tmp_path / "out" / "split")
    assert _comparable(split) == _comparable(straight)


def test_staleness_zero_is_the_synchronous_loop_and_k1_shares_its_first_step(tiny_policy,
                                                                             tmp_path):
    common = _common(tiny_policy)
    common[common.index("--steps") + 1] = "2"
    _train([*common, "--run_name", "sync"], cwd=tmp_path)
    _train([*common, "--run_name", "k1", "--max_staleness", "1"], cwd=tmp_path)
    sync = _comparable(_history(tmp_path / "out" / "sync"))
    k1 = _comparable(_history(tmp_path / "out" / "k1"))
    assert [h["rollout/staleness_max"] for h in sync] == [0.0, 0.0]
    assert k1[0] == sync[0]  # step 1 is made by version 0 either way
    assert k1[1]["rollout/staleness_max"] == 1.0
    assert k1[1]["reward/mean"] != sync[1]["reward/mean"]  # step 2: the old policy's answers


def test_stale_answers_get_behaviour_weights_and_rollout_logprobs_skip_scoring(tiny_policy,
                                                                              tmp_path):
    common = _common(tiny_policy, "--max_staleness", "1", "--epochs", "2")
    common[common.index("--steps") + 1] = "3"
    _train([*common, "--run_name", "trace", "--behaviour_correction", "trace",
            "--behaviour_cap", "1.5"], cwd=tmp_path)  # fmt: skip
    hist = _history(tmp_path / "out" / "trace")
    # Step 1: behaviour = proximal policy up to the engines' numerics; later steps: one
    # version stale, so the weights move away from 1 and some reach the cap.
    assert abs(hist[0]["behaviour/weight_mean"] - 1) < 1e-3 and hist[0]["behaviour/kl"] < 1e-4
    for h in hist[1:]:
        assert h["behaviour/kl"] > 10 * hist[0]["behaviour/kl"]
        assert 0 < h["behaviour/weight_mean"] <= 1.5 and h["behaviour/weight_max"] > 1
    assert len(hist) == 3 and all(h["policy/lr"] > 0 for h in hist)
    common[common.index("--loss") + 1] = "grpo"
    _train([*common, "--run_name", "rollout", "--old_logprobs", "rollout",
            "--behaviour_correction", "token"], cwd=tmp_path)  # fmt: skip
    hist = _history(tmp_path / "out" / "rollout")
    for h in hist:  # the proximal policy is the behaviour one: weight 1, no mismatch
        assert h["behaviour/weight_mean"] == 1.0 and h["behaviour/kl"] == 0.0
        assert h["rollout/logprob_diff_max"] == 0.0
