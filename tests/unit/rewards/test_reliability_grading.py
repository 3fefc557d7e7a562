"""Grading workers stay bounded: memory (RLIMIT_AS), CPU time (RLIMIT_CPU) and stderr.

A worker that allocates past its cap scores 0 with the error counted and the pool carries on; a
worker that spins past its CPU budget is ended by the kernel (SIGXCPU), counted and replaced; a
huge adversarial answer, whose parsing timeout math-verify logs with the whole answer quoted,
produces a bounded amount of stderr (lines truncated, repeats counted).

The graders are module-level so that spawned workers can import them by name; this module keeps
its imports light for the same reason (every worker imports it).
"""

from __future__ import annotations

import logging
import re
import sys
import time
import warnings

import pytest

from strace_ds.rewards import RewardPool, grade_answer, grading

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="resource limits are applied on Linux only"
)

HUGE = "\\boxed{" + "1+" * 500_000 + "1}"  # 1,000,009 characters
MIB = 2**20


def limits_grader(response: str, gold: str) -> float:
    """Misbehaves on marked responses, else grades normally."""
    if response == "ALLOC":  # a blow-up like sympy expanding (x+1)^(10^6): far past the cap
        block = bytearray(3 * 2**30)
        return float(len(block))
    if response in ("LIMITS", "MAPPED", "CORE"):
        import resource

        from strace_ds.rewards.worker import _address_space_bytes

        # In MiB: a reward beyond |r| <= MAX_ABS_REWARD (1e6) would be an error.
        if response == "LIMITS":
            return resource.getrlimit(resource.RLIMIT_AS)[0] / 2**20
        if response == "CORE":
            return float(resource.getrlimit(resource.RLIMIT_CORE)[0])
        return (_address_space_bytes() or 0) / 2**20
    if response == "SPIN":  # CPU-bound, no sleeping: only the CPU limit (or the timeout) stops it
        n = 0
        while True:
            n += 1
    return grade_answer(response, gold)


def noisy_grader(response: str, gold: str) -> float:
    """Grades with a 1 s math-verify timeout (so the real parsing-timeout log fires fast) and,
    on ``LOG``, logs the answer the way math-verify does, through its logger, 25 times."""
    grading.MATH_VERIFY_TIMEOUT_S = 1
    if response.startswith("LOG"):
        log = logging.getLogger("math_verify.parser")
        for _ in range(25):
            log.warning(f"Timeout during parsing: {response}")
        warnings.warn("W" * 100_000, RuntimeWarning, stacklevel=1)
        return 0.0
    return grade_answer(response, gold)


@linux_only
def test_worker_over_memory_cap_scores_zero_and_pool_recovers() -> None:
    with RewardPool(
        num_workers=1, timeout_s=30.0, grader=limits_grader, memory_limit_gib=1.0
    ) as pool:
        pool.wait_ready()
        assert pool.limits.memory_bytes == 2**30
        result = pool.score(["ALLOC", r"\boxed{5}"], ["5", "5"])
        assert result.rewards == [0.0, 1.0]
        assert result.errors[0] is not None and result.errors[0].startswith("MemoryError")
        assert result.errors[1] is None
        assert (result.num_errors, result.num_timeouts) == (1, 0)
        # The worker survived the MemoryError (the allocation never happened) and still grades.
        again = pool.score([r"\boxed{x = 7}", r"\boxed{8 = 7}"], ["7", "7"])
        assert again.rewards == [1.0, 0.0]
        assert again.errors == [None, None]


@linux_only
def test_worker_over_cpu_limit_is_ended_and_replaced() -> None:
    # cpu_limit_factor * timeout_s = 1 CPU second per item, far below the 60 s wall timeout.
    with RewardPool(
        num_workers=1, timeout_s=60.0, grader=limits_grader, cpu_limit_factor=1 / 60
    ) as pool:
        pool.wait_ready()
        assert pool.limits.cpu_s == 1
        restarts = pool.num_restarts
        t0 = time.monotonic()
        result = pool.score(["SPIN", r"\boxed{4}"], ["4", "4"])
        assert time.monotonic() - t0 < 45.0  # the CPU limit, not the wall timeout, ended it
        assert result.rewards == [0.0, 1.0]
        assert result.timed_out == [False, False]
        assert result.errors[0] is not None and "SIGXCPU" in result.errors[0]
        assert pool.num_restarts == restarts + 1
        # The CPU budget is per item: many cheap items on one worker never hit it.
        many = pool.score([r"\boxed{3}"] * 20, ["3"] * 20)
        assert many.rewards == [1.0] * 20


@linux_only
def test_memory_cap_is_headroom_over_the_loaded_worker() -> None:
    # Relative, because the launching script (re-imported by "spawn") may bring torch along.
    with RewardPool(
        num_workers=1, timeout_s=30.0, grader=limits_grader, memory_limit_gib=0.5
    ) as pool:
        result = pool.score(["LIMITS", "MAPPED", "CORE"], ["", "", ""])
    soft, mapped, core = result.rewards
    assert 0 < soft - mapped <= 0.5 * 2**10  # MiB
    assert soft - mapped > 0.5 * 2**10 - 256  # MiB; what grading itself has mapped since
    assert core == 0.0  # no core file when SIGXCPU ends a worker


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_limit_gib": 0}, "memory_limit_gib must be > 0 or None"),
        ({"memory_limit_gib": -1.0}, "memory_limit_gib must be > 0 or None"),
        ({"cpu_limit_factor": 0.0}, "cpu_limit_factor must be > 0 or None"),
        ({"cpu_limit_factor": "3"}, "cpu_limit_factor must be > 0 or None"),
    ],
)
def test_pool_rejects_bad_limits(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RewardPool(**kwargs)


def test_limits_default_and_off() -> None:
    pool = RewardPool(num_workers=1, timeout_s=10.0, memory_limit_gib=None, cpu_limit_factor=None)
    try:
        assert (pool.limits.memory_bytes, pool.limits.cpu_s) == (None, None)
        assert pool.score([r"\boxed{2}"], ["2"]).rewards == [1.0]
    finally:
        pool.close()
    pool = RewardPool(num_workers=1, timeout_s=2.5)
    try:
        assert (pool.limits.memory_bytes, pool.limits.cpu_s) == (2 * 2**30, 8)  # ceil(3 * 2.5)
    finally:
        pool.close()


def test_huge_adversarial_answer_produces_bounded_stderr(capfd: pytest.CaptureFixture) -> None:
    # Before the bounded handler: 25 log lines of 1,000,033 characters per LOG item, plus one
    # per parsing timeout (measured in training: 20 MB of stderr for 462 items).
    with RewardPool(num_workers=1, timeout_s=30.0, grader=noisy_grader) as pool:
        result = pool.score([HUGE, "LOG" + HUGE, "LOG" + HUGE, r"\boxed{6}"], ["42"] * 3 + ["6"])
    err = capfd.readouterr().err
    assert result.rewards == [0.0, 0.0, 0.0, 1.0]
    assert result.errors == [None] * 4 and result.num_timeouts == 0
    assert len(err) < 20_000, f"{len(err)} characters of stderr"
    assert max(len(line) for line in err.splitlines()) <= 600
    # The real math-verify record and the emulated ones, cut with their length said.
    assert re.search(r"Timeout during parsing: \\boxed\{1\+1\+[1+]*\.\.\. \[10000\d\d chars\]", err)
    warned = re.search(r"RuntimeWarning: W+\.\.\. \[(\d+) chars\]", err)  # warnings too
    # The record counts this file's path (the warning's location): the window [100000, 100099]
    # measured when the path was 48 characters long, shifted by the path's length.
    assert warned and 100_000 <= int(warned[1]) - len(__file__) + 48 <= 100_099
    # Per call site 3 records are shown, the rest counted: the real timeout (1 record, shown)
    # and the emulated site (50 records: 3 shown, a count at 10, the total at exit).
    assert err.count("Timeout during parsing") == 1 + 3
    assert re.search(r"7 more log records from math_verify\.parser at .*\(10 in all\)", err)
    assert re.search(r"47 more log records from math_verify\.parser at .*\(50 in all\)", err)
