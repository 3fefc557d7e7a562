"""Rewards inside their guard: a reward's subprocesses die with its timeout, absurd values are
errors naming the reward, user rewards cannot change math-verify's verdict, printed output is
bounded, reward/accuracy is always math-verify's, and timeouts count toward the run's abort."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from strace_ds.config import RewardConfig
from strace_ds.rewards import RewardPool
from strace_ds.rewards.pool import OUTPUT_BATCH_BYTES, OUTPUT_CALL_BYTES
from strace_ds.rewards.registry import parse_reward_spec, with_verifier
from strace_ds.train.loop import Trainer, grading_error_streak
from strace_ds.train.setup import build_reward_pool

linux_only = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@linux_only
def test_a_timeout_kills_the_rewards_subprocesses_too(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    with RewardPool(num_workers=1, timeout_s=2.0, rewards="user_rewards:spawn_and_hang") as pool:
        result = pool.score(["x"], ["1"], [{"pidfile": str(pidfile)}])
        assert result.timed_out == [True]
        child, group = map(int, pidfile.read_text().split())
        assert group != os.getpgid(0)  # the worker leads a group of its own
        end = time.monotonic() + 5
        while _alive(child) and time.monotonic() < end:
            time.sleep(0.05)
        assert not _alive(child), "the reward's `sleep 60` outlived the timeout"
        assert _group_members(group) == []  # no process of that group remains


def _group_members(group: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``group``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state, _ppid, pgrp = f.read().rpartition(")")[2].split()[:3]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(pgrp) == group and state != "Z":
                members.append(int(entry))
    return members


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1e300", "beyond |r| <= 1e+06"),
        ("3e38", "beyond |r| <= 1e+06"),
        ("-2000000", "beyond |r| <= 1e+06"),
        ("inf", "returned inf"),
        ("nan", "returned nan"),
        ("1" + "0" * 400, "float() refuses"),
    ],
)
def test_absurd_rewards_are_errors_naming_the_reward(value: str, message: str) -> None:
    with RewardPool(num_workers=1, rewards="math_verify:0,user_rewards:echo_number") as pool:
        result = pool.score([value, "1000000"], ["1", "1"])
    assert result.rewards == [0.0, 1e6]  # the bound itself is allowed
    assert result.num_errors == 1 and result.errors[0].startswith("echo_number: ValueError")
    assert message in result.errors[0]


def test_weights_beyond_the_bound_are_refused() -> None:
    with pytest.raises(ValueError, match=r"--reward .*beyond \|w\| <= 1e\+06"):
        parse_reward_spec("math_verify:1e7")


def test_a_user_reward_cannot_change_math_verifys_verdict() -> None:
    spec = "math_verify,user_rewards:tamper_with_grading:0"
    with RewardPool(num_workers=1, rewards=spec) as pool:
        result = pool.score([r"\boxed{5}"] * 6, ["7"] * 6)
        assert len(pool.worker_pids) == 2  # one worker per set: math-verify's, the user's
    assert result.num_errors == 0
    assert result.components["math_verify"] == [0.0] * 6  # wrong answers stay wrong


def test_printed_output_is_bounded_per_call_and_per_batch(capfd: pytest.CaptureFixture) -> None:
    with RewardPool(num_workers=1, timeout_s=30.0, rewards="user_rewards:chatty") as pool:
        result = pool.score(["a"] * 4, ["1"] * 4)
    out, err = capfd.readouterr()
    assert result.rewards == [1.0] * 4
    assert len(out) + len(err) < 4 * OUTPUT_CALL_BYTES + 2000  # 8 MB printed
    assert len(out) + len(err) <= OUTPUT_BATCH_BYTES + 2000
    assert result.output_dropped > 7_900_000
    assert err.count("output of this reward call cut") == 4
    assert f"{result.output_dropped} bytes of reward output dropped in this batch" in err


def test_output_beyond_the_batch_budget_is_dropped(capfd: pytest.CaptureFixture) -> None:
    n = OUTPUT_BATCH_BYTES // OUTPUT_CALL_BYTES + 4  # more calls than the batch budget holds
    with RewardPool(num_workers=1, timeout_s=30.0, rewards="user_rewards:chatty") as pool:
        pool.score(["a"] * n, ["1"] * n)
    out, err = capfd.readouterr()
    assert len(out) + len(err) <= OUTPUT_BATCH_BYTES + 20 * 200


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("user_rewards:length_penalty", "user_rewards:length_penalty,math_verify:0"),
        ("format:0.1", "format:0.1,math_verify:0"),
        ("math_verify,format:0.1", "math_verify,format:0.1"),
        ("synthetic", "synthetic"),
    ],
)
def test_the_verifier_is_graded_alongside_when_the_spec_lacks_it(spec: str, expected: str) -> None:
    assert with_verifier(spec) == expected


def test_the_trainers_pool_reports_math_verify_beside_a_user_reward() -> None:
    config = RewardConfig(reward="user_rewards:length_penalty", reward_workers=1)
    with build_reward_pool(config) as pool:
        assert pool.labels == ["length_penalty", "math_verify"]
        result = pool.score([r"\boxed{7}", r"\boxed{8}"], ["7", "7"])
    assert result.components["math_verify"] == [1.0, 0.0]  # what reward/accuracy reads
    assert result.rewards == [-0.09, -0.09]  # the user reward alone is trained on


def test_timeouts_count_toward_the_grading_error_abort() -> None:
    history = [{"reward/errors": 0.0, "reward/timeouts": 16.0}] * 3
    assert grading_error_streak(history, rows=16, max_frac=0.5, patience=3) == [1.0] * 3
    calm = [{"reward/errors": 0.0, "reward/timeouts": 0.0}] * 3
    assert grading_error_streak(calm, rows=16, max_frac=0.5, patience=3) is None


def test_a_step_with_timeouts_prints_one_line_naming_the_reward() -> None:
    lines: list[str] = []
    trainer = SimpleNamespace(
        cfg=SimpleNamespace(prompts_per_step=4, group_size=4, reward_timeout_s=2.0),
        state=SimpleNamespace(step=3), _log=lines.append, _last_grading_timeout="bonus",
    )
    Trainer._warn_on_timeouts(trainer, {"reward/timeouts": 16.0})  # type: ignore[arg-type]
    Trainer._warn_on_timeouts(trainer, {"reward/timeouts": 0.0})  # type: ignore[arg-type]
    assert len(lines) == 1
    assert "step 3: 16 of 16" in lines[0] and "reward_timeout_s=2 s" in lines[0]
    assert "'bonus'" in lines[0] and "max_grading_error_frac" in lines[0]
