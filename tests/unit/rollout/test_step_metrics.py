"""The step metrics as a pure reduction of every rank's partial statistics."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.experience import _experience

from strace_ds.train.metrics import MISMATCH_THRESHOLD, local_step_stats, reduce_step_metrics
from strace_ds.train.updater import epoch_mini_batches


def _stats(seed: int, rows: int = 4):
    torch.manual_seed(seed)
    exp = _experience(1, 0)
    exp.batch.response_mask[0, 2] = False  # one padded token
    old = exp.batch.rollout_logprobs + 0.3 * torch.randn_like(exp.batch.rollout_logprobs)
    exp.num_errors, exp.num_timeouts = seed, 1
    loss = {"policy/loss": [0.5 + seed, -0.25], "trace/ratio_max": [1.1 + seed, 1.3],
            "trace/ratio_min": [0.9, 0.8 - seed / 10], "policy/clip_frac_low": [0.1, math.nan]}
    return exp, old, local_step_stats(exp, old, loss)


def test_two_ranks_reduce_to_the_metrics_of_their_union() -> None:
    parts = [_stats(0), _stats(1)]
    timings = {"perf/rollout_s": 2.0, "perf/train_s": 4.0}
    m = reduce_step_metrics([p[2] for p in parts], updates=2, timings=timings)
    rewards = torch.cat([p[0].rewards for p in parts])
    assert m["reward/mean"] == pytest.approx(float(rewards.mean()))
    correct = torch.cat([p[0].correct for p in parts])
    assert m["reward/accuracy"] == pytest.approx(float(correct.mean()))
    assert m["reward/errors"] == 1.0 and m["reward/timeouts"] == 2.0  # totals, not means
    diffs = torch.cat([(e.batch.rollout_logprobs - old).abs()[e.batch.response_mask]
                       for e, old, _ in parts])
    assert m["rollout/logprob_diff_mean"] == pytest.approx(float(diffs.mean()))
    assert m["rollout/logprob_diff_max"] == pytest.approx(float(diffs.max()))
    above = (diffs > MISMATCH_THRESHOLD).float()
    assert m["rollout/logprob_diff_frac"] == pytest.approx(float(above.mean()))
    assert m["policy/loss"] == pytest.approx((0.5 - 0.25 + 1.5 - 0.25) / 2)  # per update
    assert m["trace/ratio_max"] == pytest.approx(2.1) and m["trace/ratio_min"] == pytest.approx(0.7)
    assert m["policy/clip_frac_low"] == pytest.approx(0.1)  # NaNs (no loss tokens) skipped
    assert m["response/length_mean"] == 3.0
    tokens = sum(float(e.batch.response_mask.sum()) for e, _, _ in parts)
    assert m["perf/train_tokens_per_s"] == pytest.approx(tokens / 4.0)
    assert m["perf/rollout_tokens_per_s"] == pytest.approx(24.0 / 2.0)


def test_one_rank_and_staleness() -> None:
    _, _, stats = _stats(0)
    stats["staleness"] = 1.0
    other = dict(_stats(1)[2], staleness=0.0)
    m = reduce_step_metrics([stats, other], updates=4, timings={"perf/rollout_s": 1.0,
                                                                 "perf/train_s": 1.0}, epochs=2)
    assert m["rollout/staleness_mean"] == 0.5 and m["rollout/staleness_max"] == 1.0
    assert m["policy/loss"] == pytest.approx((0.25 + 1.25) / 4)
    alone = reduce_step_metrics([_stats(0)[2]], updates=2, timings={"perf/rollout_s": 1.0,
                                                                     "perf/train_s": 1.0})
    assert "rollout/staleness_mean" not in alone


def _global_batches(world: int, epoch: int) -> list[set[int]]:
    """Each mini-batch of ``epoch`` as global prompt positions, built by ``world`` ranks."""
    mini_batches, group, chunk = 2, 2, 8  # 16 prompts per step, 2 answers each
    share = chunk // world
    out: list[set[int]] = [set() for _ in range(mini_batches)]
    for r in range(world):
        rows = epoch_mini_batches(mini_batches * share * group, mini_batches, group, epoch,
                                  seed=7, step=3, offset=r * share)  # fmt: skip
        for j, idx in enumerate(rows):
            for g in sorted({int(i) // group for i in idx}):
                c, i = divmod(g, share)  # local group -> (chunk, position in the share)
                out[j].add(c * chunk + r * share + i)
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_epoch_shuffle_builds_the_same_global_mini_batches_for_any_rank_count(world) -> None:
    """Global mini-batch membership (as global prompt positions) does not depend on ranks."""
    assert _global_batches(world, 0) == [set(range(8)), set(range(8, 16))]
    second = _global_batches(world, 1)
    assert sorted(p for b in second for p in b) == list(range(16))
    assert second != _global_batches(world, 0)  # the second pass moved groups
    assert second == _global_batches(1, 1)
    assert _global_batches(world, 2) == _global_batches(1, 2) != second
