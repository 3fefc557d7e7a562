"""Rewards: boxed extraction, math-verify grading, the timed worker pool, DAPO overlong shaping."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strace_ds.rewards import RewardPool, RewardResult, extract_boxed_answer, grade_answer

TIMEOUT_S = 1.0
SLACK_S = 2.5  # kill + reap + a loaded 2-core machine; the hang itself would be forever


def faulty_grader(response: str, gold: str) -> float:
    """Module level so that spawned workers can import it: misbehaves on marked responses."""
    if response == "HANG":
        while True:  # an item that never finishes, like sympy on 10^{10^{10^{10}}}
            time.sleep(60)
    if response == "RAISE":
        raise ValueError("bad input 123")
    if response == "CRASH":
        os._exit(3)  # a segfault-like death, no exception to catch
    return grade_answer(response, gold)


# ----------------------------------------------------------------------------- extraction
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"The answer is $\boxed{42}$.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"first \boxed{1}, then \boxed{2}", "2"),  # the LAST box wins
        (r"\boxed{1} then \fbox{3}", "3"),  # \fbox counts as a box
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces are not structure
        (r"\boxed{a \\ b}", r"a \\ b"),  # a LaTeX line break before the closing brace
        (r"\boxed{ 8 }", "8"),
        (r"\boxed {5}", "5"),
        (r"\boxed{\boxed{5}}", "5"),
        (r"\boxed{\text{(A)}}", r"\text{(A)}"),
        ("the answer is 5", None),  # no box
        (r"\boxed{}", None),  # the instruction echoed back
        (r"\boxed{\frac{1}{2}", None),  # truncated mid-answer
        (r"\boxed{1} and finally \boxed{2", None),  # no fallback to an earlier box
        (r"\boxedtext{3}", None),  # another macro
        ("", None),
    ],
)
def test_extract_boxed_answer_cases(text: str, expected: str | None) -> None:
    assert extract_boxed_answer(text) == expected


_balanced = st.recursive(
    st.text(alphabet="ab1+ ", max_size=5),
    lambda inner: st.builds(lambda x, y: x + "{" + y + "}", inner, inner),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(prefix=st.text(alphabet="xy{ 1", max_size=6), content=_balanced)
def test_extract_boxed_answer_returns_any_balanced_content(prefix: str, content: str) -> None:
    # A stray "{" before the box must not matter: only the last box is scanned.
    expected = content.strip() or None
    assert extract_boxed_answer(prefix + r"\boxed{" + content + "} done") == expected


def test_extract_boxed_answer_rejects_non_str() -> None:
    with pytest.raises(ValueError, match="text must be a str"):
        extract_boxed_answer(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- grading
@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        (r"so $x = \boxed{0.5}$", r"\frac{1}{2}", 1.0),
        (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{\dfrac{3}{4}}", "0.75", 1.0),
        (r"\boxed{ 8 }", "8", 1.0),
        (r"\boxed{x = 8}", "8", 1.0),
        (r"\boxed{\{2, 1\}}", r"\{1,2\}", 1.0),
        (r"\boxed{1,000}", "1000", 1.0),
        (r"\boxed{8}", r"The total is \boxed{8}.", 1.0),  # gold given as a solution text
        (r"\boxed{9}", "8", 0.0),
        (r"\boxed{3.14159}", r"\pi", 0.0),
        ("The answer is 8.", "8", 0.0),  # right number, but no box
        (r"\boxed{8} no wait \boxed{9}", "8", 0.0),  # last box is the answer
        (r"\boxed{8} no wait \boxed{9}", "9", 1.0),
        (r"\boxed{\frac{1}{2}", r"\frac{1}{2}", 0.0),  # truncated
    ],
)
def test_grade_answer(response: str, gold: str, expected: float) -> None:
    assert grade_answer(response, gold) == expected


@pytest.mark.parametrize(
    "response",
    [
        # math-verify alone keeps the right-hand side of a relation when gold is not one:
        r"\boxed{43 = 42}",
        r"\boxed{41 = 42}",
        r"\boxed{1 + 1 = 42}",
        r"\boxed{x^2 = 42}",  # x = sqrt(42)
        r"\boxed{x = 43 = 42}",  # a chain: every left operand counts
        r"\boxed{43 = x = 42}",
        r"\boxed{\frac{43 = 42}{1}}",  # nested in a group
        r"\boxed{\left( 43 = 42 \right)}",
        r"\boxed{x = (43 = 42)}",
        r"\boxed{43 &= 42}",
        r"\boxed{43 \,=\, 42}",
        r"\boxed{43 == 42}",
        r"\boxed{43 \coloneqq 42}",
        r"\boxed{43 \equiv 42 \pmod{5}}",
        r"\boxed{43 \in 42}",
        r"\boxed{43 \approx 42}",
        # relations that never state a value
        r"\boxed{43 \le 42}",
        r"\boxed{43 < 42}",
        r"\boxed{43 \neq 42}",
        r"\boxed{43 ≠ 42}",
        r"\boxed{x \le 42}",
        # unparsable LaTeX: math-verify's plain-expression fallback took the last number
        r"\boxed{43 \Rightarrow 42}",
        r"\boxed{43 \implies x = 42}",
        r"\boxed{43 \to 42}",
        r"\boxed{43 → 42}",
        r"\boxed{43 \therefore 42}",
        r"\boxed{43 \\ 42}",
        r"\boxed{43 \stackrel{?}{=} 42}",
        r"\boxed{43 \foo 42}",
    ],
)
def test_grade_answer_relation_is_not_its_right_hand_side(response: str) -> None:
    assert grade_answer(response, "42") == 0.0


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        (r"\boxed{x = 42}", "42"),  # a bare name on the left
        (r"\boxed{y=42}", "42"),
        (r"\boxed{a_1 = 42}", "42"),
        (r"\boxed{x_{1} = 42}", "42"),
        (r"\boxed{\alpha = 42}", "42"),
        (r"\boxed{x' = 42}", "42"),
        (r"\boxed{AB = 42}", "42"),
        (r"\boxed{\overline{AB} = 42}", "42"),
        (r"\boxed{m\angle ABC = 42}", "42"),
        (r"\boxed{f(2) = 42}", "42"),
        (r"\boxed{\text{x} = 42}", "42"),
        (r"\boxed{x \approx 42}", "42"),
        (r"\boxed{a = b = 42}", "42"),
        (r"\boxed{x = 2 \cdot 21 = 42}", "42"),  # a left operand equal to the gold
        (r"\boxed{6 \cdot 7 = 42}", "42"),
        (r"\boxed{42 = 42}", "42"),
        (r"\boxed{x = 1, y = 2}", "(1, 2)"),
        (r"\boxed{(x, y) = (1, 2)}", "(1, 2)"),
        (r"\boxed{\left(x, y\right) = \left(1, 2\right)}", "(1, 2)"),
        (r"\boxed{x \in (1, 2)}", "(1, 2)"),
        (r"\boxed{x = 42 \text{ and } y = 3}", "42, 3"),
        # gold is a relation: math-verify compares the relations
        (r"\boxed{x = 5}", "x = 5"),
        (r"\boxed{5}", "x = 5"),
        (r"\boxed{5 \ge x}", r"x \le 5"),
        (r"\boxed{1 < x < 2}", "1 < x < 2"),
        # sentence punctuation inside the box (false negatives before)
        (r"\boxed{42.}", "42"),
        (r"\boxed{42,}", "42"),
        (r"\boxed{42\,}", "42"),
        (r"\boxed{\{1, 2\}.}", r"\{1,2\}"),
        (r"\boxed{x = 42.}", "42"),
    ],
)
def test_grade_answer_accepts_named_and_punctuated_answers(response: str, gold: str) -> None:
    assert grade_answer(response, gold) == 1.0


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        (r"\boxed{41 = 42}", "x = 42"),  # gold a relation: compared as relations, still wrong
        (r"\boxed{3 = 1, 2}", "1, 2"),
        (r"\boxed{1, 3 = 2}", "1, 2"),
        (r"\boxed{.}", "42"),
        (r"\boxed{42.5}", "42"),
    ],
)
def test_grade_answer_relation_and_punctuation_negatives(response: str, gold: str) -> None:
    assert grade_answer(response, gold) == 0.0


def test_find_relations_operands() -> None:
    from strace_ds.rewards.relations import find_relations

    def ops(text: str) -> list[tuple[str, str, bool]]:
        return [(r.op, r.lhs, r.lhs_is_name) for r in find_relations(text)]

    assert ops("42") == []
    assert ops(r"\frac{1}{2}") == []
    assert ops("[0, 1)") == []
    assert ops("x = 2 \\cdot 21 = 42") == [("=", "x", True), ("=", "2 \\cdot 21", False)]
    assert ops("x = 1, y = 2") == [("=", "x", True), ("=", "y", True)]
    assert ops(r"\frac{43 = 42}{1}") == [("=", "43", False)]
    assert ops(r"(x, y) \le (1, 2)") == [("\\le", "(x, y)", True)]
    assert ops(r"\left< 1 \right> = 2") == [("=", "\\left< 1 \\right>", False)]
    assert ops("= 42") == [("=", "", False)]
    # Linear on adversarial nesting (a quadratic scan takes minutes here).
    t0 = time.monotonic()
    deep = "(" * 100_000 + "x" + ")=1" * 100_000
    assert len(find_relations(deep)) == 100_000
    assert time.monotonic() - t0 < 10.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42.", "42"),
        ("42,", "42"),
        ("42 . ", "42"),
        ("42;.", "42"),
        (r"42\,", "42"),
        (r"42\ ", "42"),
        (r"\{1, 2\}.", r"\{1, 2\}"),
        ("3.5", "3.5"),
        (r"1 \\", r"1 \\"),  # an escaped backslash is content
        (r"a\}", r"a\}"),
        ("...", ""),
    ],
)
def test_strip_trailing_punctuation(text: str, expected: str) -> None:
    from strace_ds.rewards.grading import strip_trailing_punctuation

    assert strip_trailing_punctuation(text) == expected


def test_grade_answer_bad_gold_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="gold answer is empty"):
        grade_answer(r"\boxed{1}", "  ")
    with pytest.raises(ValueError, match="could not parse the gold answer"):
        grade_answer(r"\boxed{1}", "}{")
    with pytest.raises(ValueError, match="must be str"):
        grade_answer(r"\boxed{1}", 1)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- pool
@pytest.fixture(scope="module")
def pool() -> RewardPool:
    with RewardPool(num_workers=2, timeout_s=TIMEOUT_S, grader=faulty_grader) as p:
        p.wait_ready()
        yield p


def test_pool_kills_hung_item_and_grades_the_rest(pool: RewardPool) -> None:
    pool.wait_ready()  # a replacement from an earlier test may still be starting
    pids, restarts = pool.worker_pids, pool.num_restarts
    responses = ["HANG", r"\boxed{1}", r"\boxed{0.5}", r"\boxed{3}", r"\boxed{4}"]
    golds = ["1", "1", r"\frac{1}{2}", "5", "4"]
    t0 = time.monotonic()
    result = pool.score(responses, golds)
    elapsed = time.monotonic() - t0
    assert elapsed < TIMEOUT_S + SLACK_S
    assert elapsed >= TIMEOUT_S  # it really waited for the deadline
    assert result.rewards == [0.0, 1.0, 1.0, 0.0, 1.0]
    assert result.timed_out == [True, False, False, False, False]
    assert result.errors == [None] * 5
    assert (result.num_timeouts, result.num_errors) == (1, 0)
    assert pool.num_restarts == restarts + 1
    new_pids = pool.worker_pids
    assert sum(a != b for a, b in zip(pids, new_pids)) == 1  # exactly one worker replaced
    (killed,) = set(pids) - set(new_pids)
    assert not os.path.exists(f"/proc/{killed}")  # killed AND reaped: no zombie

    # The pool keeps working afterwards, with the replacement worker.
    pool.wait_ready()
    again = pool.score(
        [r"\boxed{2}", r"\boxed{7}", r"\boxed{-1}", r"\boxed{x}"], ["2", "2", "-1", "x"]
    )
    assert again.rewards == [1.0, 0.0, 1.0, 1.0]
    assert again.timed_out == [False] * 4
    assert pool.worker_pids == new_pids


def test_pool_records_exceptions_and_crashes(pool: RewardPool) -> None:
    pids, restarts = pool.worker_pids, pool.num_restarts
    result = pool.score(["RAISE", r"\boxed{6}", r"\boxed{5}"], ["6", "6", "6"])
    assert result.rewards == [0.0, 1.0, 0.0]
    assert result.errors[0] == "ValueError: bad input 123"
    assert result.errors[1:] == [None, None]
    assert (result.num_errors, result.num_timeouts) == (1, 0)
    assert pool.worker_pids == pids  # an exception does not cost a worker

    crashed = pool.score(["CRASH", r"\boxed{6}"], ["6", "6"])
    assert crashed.rewards == [0.0, 1.0]
    assert crashed.errors[0] == "WorkerDied: worker process exited with code 3"
    assert crashed.timed_out == [False, False]
    assert pool.num_restarts == restarts + 1


def test_pool_reuses_workers_across_calls(pool: RewardPool) -> None:
    pids = pool.worker_pids
    responses = [rf"\boxed{{{i}}}" for i in range(12)]
    golds = [str(i if i % 3 else i + 1) for i in range(12)]  # every third one is wrong
    for _ in range(3):
        result = pool.score(responses, golds)
        assert result.rewards == [0.0 if i % 3 == 0 else 1.0 for i in range(12)]
    assert pool.worker_pids == pids
    empty = {"faulty_grader": []}  # one component, named after the grader
    assert pool.score([], []) == RewardResult(
        rewards=[], timed_out=[], errors=[], components=empty, component_timed_out=empty,
        component_errors=empty,
    )


def test_pool_rejects_bad_batches(pool: RewardPool) -> None:
    with pytest.raises(ValueError, match="same length"):
        pool.score(["a", "b"], ["1"])
    with pytest.raises(ValueError, match=r"golds\[1\] is int"):
        pool.score(["a", "b"], ["1", 2])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_workers": 0}, "num_workers must be an int >= 1"),
        ({"timeout_s": 0.0}, "timeout_s must be > 0"),
        ({"start_method": "fork"}, "choose one of spawn, forkserver"),
        ({"grader": lambda r, g: 1.0}, "module level"),
    ],
)
def test_pool_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RewardPool(**kwargs)


def test_pool_close_leaves_no_process_behind() -> None:
    pool = RewardPool(num_workers=2, timeout_s=TIMEOUT_S)
    pool.wait_ready()
    assert pool.score([r"\boxed{1}"], ["1"]).rewards == [1.0]
    pids = pool.worker_pids
    assert all(os.path.exists(f"/proc/{pid}") for pid in pids)
    pool.close()
    pool.close()  # idempotent
    # Gone from /proc means exited AND reaped: a zombie keeps its /proc entry.
    assert [os.path.exists(f"/proc/{pid}") for pid in pids] == [False, False]
    with pytest.raises(RuntimeError, match="closed"):
        pool.score([r"\boxed{1}"], ["1"])


# ----------------------------------------------------------------------------- overlong
# torch is imported inside these tests, not at the top: pool workers import this module to find
# `faulty_grader`, and torch would triple their start-up time (~0.5 s -> ~2 s on 2 cores).
def _penalty_reference(length: int, max_new_tokens: int, buffer: int) -> float:
    """DAPO Eq. 13 written as the paper states it, one response at a time."""
    if length <= max_new_tokens - buffer:
        return 0.0
    if length <= max_new_tokens:
        return ((max_new_tokens - buffer) - length) / buffer
    return -1.0


def test_overlong_penalty_hand_values() -> None:
    import torch

    from strace_ds.rewards import overlong_penalty

    # max 20, buffer 5: the ramp starts after 15; L=16 -> (15-16)/5 = -0.2, L=18 -> -0.6,
    # L=20 -> -1 (end of the ramp), L=21 -> -1 (beyond the limit).
    lengths = torch.tensor([0, 15, 16, 18, 20, 21, 100])
    got = overlong_penalty(lengths, max_new_tokens=20, buffer=5, dtype=torch.float64)
    expected = torch.tensor([0.0, 0.0, -0.2, -0.6, -1.0, -1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert overlong_penalty(lengths, 20, 5).dtype == torch.float32


def test_overlong_penalty_matches_loop_reference() -> None:
    import torch

    from strace_ds.rewards import overlong_penalty

    gen = torch.Generator().manual_seed(0)
    for max_new_tokens, buffer in [(20, 5), (64, 64), (512, 1), (4096, 1024)]:
        lengths = torch.randint(0, max_new_tokens + 10, (200,), generator=gen)
        got = overlong_penalty(lengths, max_new_tokens, buffer, dtype=torch.float64)
        ref = [_penalty_reference(int(n), max_new_tokens, buffer) for n in lengths]
        torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-12)


def test_overlong_penalty_validates() -> None:
    import torch

    from strace_ds.rewards import overlong_penalty

    with pytest.raises(ValueError, match="buffer must be in"):
        overlong_penalty(torch.tensor([1]), max_new_tokens=10, buffer=11)
    with pytest.raises(ValueError, match="buffer must be in"):
        overlong_penalty(torch.tensor([1]), max_new_tokens=10, buffer=0)
    with pytest.raises(ValueError, match="1-D"):
        overlong_penalty(torch.zeros(2, 2), max_new_tokens=10, buffer=2)


def test_apply_overlong_modes() -> None:
    import torch

    from strace_ds.rewards import OVERLONG_MODES, apply_overlong

    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    lengths = torch.tensor([10, 16, 20, 20])
    truncated = torch.tensor([False, False, True, False])
    args = {"max_new_tokens": 20, "buffer": 5}

    r, keep = apply_overlong(rewards, lengths, truncated, mode="none", **args)
    assert r.tolist() == [1.0, 0.0, 1.0, 1.0] and keep.tolist() == [True] * 4

    r, keep = apply_overlong(rewards, lengths, truncated, mode="mask", **args)
    assert r.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert keep.tolist() == [True, True, False, True]  # the truncated one leaves the loss

    # soft: penalties [0, (15-16)/5, -1, -1] added -> [1, -0.2, 0, 0]
    r, keep = apply_overlong(rewards, lengths, truncated, mode="soft", **args)
    torch.testing.assert_close(r, torch.tensor([1.0, -0.2, 0.0, 0.0]), rtol=0, atol=1e-7)
    assert keep.tolist() == [True] * 4
    assert rewards.tolist() == [1.0, 0.0, 1.0, 1.0]  # inputs untouched

    # Plain lists work the same (the trainer builds `truncated` from finish reasons).
    r, keep = apply_overlong([1.0, 0.0], [16, 25], [False, True], mode="mask", **args)
    assert r.tolist() == [1.0, 0.0] and keep.tolist() == [True, False]
    assert OVERLONG_MODES == ("none", "mask", "soft")


def test_apply_overlong_validates() -> None:
    import torch

    from strace_ds.rewards import apply_overlong

    ones = torch.ones(3)
    flags = torch.zeros(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="choose one of none, mask, soft"):
        apply_overlong(ones, ones, flags, max_new_tokens=8, mode="hard", buffer=2)
    with pytest.raises(ValueError, match="same length"):
        apply_overlong(ones, torch.ones(2), flags, max_new_tokens=8, mode="soft", buffer=2)
    with pytest.raises(ValueError, match="bool tensor"):
        apply_overlong(ones, ones, ones, max_new_tokens=8, mode="mask", buffer=2)
