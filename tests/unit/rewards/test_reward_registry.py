"""Named and user rewards: the ``--reward`` spec, start-up import errors, and user functions
graded through the real worker pool (weights, per-reward values, errors, timeouts).

The user functions live in ``tests/helpers/user_rewards.py`` (a stand-in for a user's module), named
``user_rewards:<function>``.
"""

from __future__ import annotations

import sys
import time
import types

import pytest

from strace_ds.rewards import (
    REWARDS,
    RewardPool,
    RewardTerm,
    grade_answer,
    load_reward,
    parse_reward_spec,
)
from strace_ds.rewards.registry import format_reward, math_verify_reward

TIMEOUT_S = 1.0
SLACK_S = 2.5  # kill + reap + a loaded 2-core machine
SPEC = "math_verify,format:0.1,user_rewards:bonus:0.5"


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("math_verify", [RewardTerm("math_verify", 1.0)]),
        ("format:0.1", [RewardTerm("format", 0.1)]),
        (
            SPEC,
            [
                RewardTerm("math_verify", 1.0),
                RewardTerm("format", 0.1),
                RewardTerm("user_rewards:bonus", 0.5),
            ],
        ),
        # No weight: the last part is the function's name. Spaces around terms are dropped.
        (" synthetic , pkg.mod:fn ", [RewardTerm("synthetic"), RewardTerm("pkg.mod:fn")]),
        ("pkg.mod:fn:-1e-3", [RewardTerm("pkg.mod:fn", -0.001)]),
        ("pkg.mod:fn:.5,format:0", [RewardTerm("pkg.mod:fn", 0.5), RewardTerm("format", 0.0)]),
        ("pkg:inf", [RewardTerm("pkg:inf", 1.0)]),  # a function named inf, not a weight
        ("pkg:Cls.method:2", [RewardTerm("pkg:Cls.method", 2.0)]),
    ],
)
def test_parse_good_specs(spec: str, expected: list[RewardTerm]) -> None:
    assert parse_reward_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no reward given"),
        ("math_verify,", "empty term"),
        ("math_verify,,format", "empty term"),
        ("mathverify", r"unknown reward 'mathverify'; choose one of format, math_verify, synth"),
        ("format:1.5x", r"'1.5x' is not a dotted Python name\); a weight is a number"),
        ("pkg.mod:fn:0.1:0.2", r"'fn:0.1' is not a dotted Python name"),
        ("pkg..mod:fn", r"'pkg..mod' is not a dotted Python name"),
        ("pkg.mod:", r"'' is not a dotted Python name"),
        ("math_verify:1e999", "not finite"),
        ("format,format:0.5", r"format and format are both reported as 'reward/format'"),
        ("a.rewards:score,b.rewards:score", r"a.rewards:score and b.rewards:score are both"),
        ("format:0,math_verify:0", "every weight is 0"),
    ],
)
def test_parse_bad_specs_name_the_option_and_the_fix(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_reward_spec(spec)
    assert str(info.value).startswith(f"--reward {spec!r}: ")


def test_parse_rejects_a_non_string() -> None:
    with pytest.raises(ValueError, match="--reward must be a string"):
        parse_reward_spec(["math_verify"])  # type: ignore[arg-type]


def test_labels_are_the_reported_names() -> None:
    terms = parse_reward_spec("math_verify,pkg.sub.mod:length_penalty:2,pkg:Cls.method")
    assert [t.label for t in terms] == ["math_verify", "length_penalty", "method"]


# ----------------------------------------------------------------------------- loading
def test_registry_functions() -> None:
    assert set(REWARDS) == {"math_verify", "format", "synthetic"}
    # synthetic is the math-verify grader: the synthetic task's golds are graded by it today.
    assert REWARDS["synthetic"] is REWARDS["math_verify"] is math_verify_reward
    assert math_verify_reward(r"so \boxed{0.5}", r"\frac{1}{2}", {}) == 1.0
    assert math_verify_reward(r"so \boxed{3}", "4", {}) == 0.0
    # format: a closed, non-empty last box, whatever it holds and whatever the gold.
    assert format_reward(r"\boxed{3}", "4", {}) == 1.0
    assert format_reward(r"\boxed{x^2 = }", "4", {}) == 1.0
    assert [format_reward(t, "4", {}) for t in ("4", r"\boxed{}", r"\boxed{4")] == [0.0] * 3


def test_load_user_function_by_import() -> None:
    import user_rewards

    assert load_reward("user_rewards:bonus") is user_rewards.bonus
    assert load_reward("math_verify") is math_verify_reward


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module_xyz:fn", r"module 'no_such_module_xyz' does not import "
                                  r"\(ModuleNotFoundError.*install it or put its directory"),
        ("user_rewards:missing", r"'user_rewards' has no attribute 'missing' \(a weight must"),
        ("user_rewards:bonus.attr", r"has no attribute 'attr'"),
        ("user_rewards:NOT_A_FUNCTION", "it is a int, not a function"),
        ("user_rewards:two_arguments", r"cannot take \(response, gold, example\)"),
        ("user_rewards:lambda_reward", "cannot be sent to the grading workers.*define it with def"),
    ],
)  # fmt: skip
def test_unusable_functions_are_start_up_errors(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        load_reward(name)
    assert str(info.value).startswith(f"--reward: reward {name!r} cannot be used: ")
    # The pool refuses the spec before it starts any worker.
    with pytest.raises(ValueError, match=message):
        RewardPool(num_workers=1, rewards=f"math_verify,{name}:0.5")


def test_pool_takes_rewards_or_grader_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        RewardPool(rewards="format", grader=math_verify_reward)


def test_function_the_workers_cannot_import_fails_at_start_up() -> None:
    """Importable in this process only (a module that exists in ``sys.modules`` alone): the
    workers report the import error and the pool refuses to start."""

    def score(response: str, gold: str, example: dict) -> float:
        return 1.0

    module = types.ModuleType("only_in_parent_rewards")
    score.__module__, score.__qualname__ = module.__name__, "score"  # pickles by that name
    module.score = score  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    expected = "(?s)could not load the reward functions.*No module named 'only_in_parent"
    try:
        with pytest.raises(RuntimeError, match=expected):
            RewardPool(num_workers=1, rewards="only_in_parent_rewards:score").wait_ready()
    finally:
        del sys.modules[module.__name__]


# ----------------------------------------------------------------------------- the pool
@pytest.fixture(scope="module")
def pool() -> RewardPool:
    with RewardPool(num_workers=2, timeout_s=TIMEOUT_S, rewards=SPEC) as p:
        p.wait_ready()
        yield p


def test_weights_combine_and_each_reward_is_reported(pool: RewardPool) -> None:
    assert pool.labels == ["math_verify", "format", "bonus"]
    responses = [r"\boxed{4}", r"\boxed{5}", "four", r"\boxed{4}"]
    golds = ["4", "4", "4", "4"]
    examples = [{"bonus": 2.0}, {"bonus": 1.0}, {"bonus": -1.0}, {}]
    result = pool.score(responses, golds, examples)
    assert result.components == {
        "math_verify": [1.0, 0.0, 0.0, 1.0],
        "format": [1.0, 1.0, 0.0, 1.0],
        "bonus": [2.0, 1.0, -1.0, 0.0],  # the example dict reached the user function
    }
    # 1*math_verify + 0.1*format + 0.5*bonus, row by row:
    # 1 + 0.1 + 1 = 2.1 | 0 + 0.1 + 0.5 = 0.6 | 0 + 0 - 0.5 = -0.5 | 1 + 0.1 + 0 = 1.1
    assert result.rewards == pytest.approx([2.1, 0.6, -0.5, 1.1], abs=1e-12)
    assert result.errors == [None] * 4 and result.timed_out == [False] * 4
    assert result.component_errors["bonus"] == [None] * 4
    # Without examples every reward gets {}.
    assert pool.score([r"\boxed{4}"], ["4"]).components["bonus"] == [0.0]


def test_user_function_errors_are_counted_and_score_zero(pool: RewardPool) -> None:
    pids = pool.worker_pids
    responses = [r"RAISE \boxed{4}", r"NAN \boxed{4}", r"STR \boxed{4}", r"\boxed{4}"]
    examples = [{"bonus": 1.0}] * 4
    result = pool.score(responses, ["4"] * 4, examples)
    assert result.components["bonus"] == [0.0, 0.0, 0.0, 1.0]
    assert result.components["math_verify"] == [1.0] * 4  # the other rewards still count
    assert result.rewards == pytest.approx([1.1, 1.1, 1.1, 1.6], abs=1e-12)
    assert result.errors == [
        "bonus: ValueError: bonus: no bonus for you",
        "bonus: ValueError: the reward returned nan; return a finite float",
        "bonus: TypeError: the reward returned str; return a finite float",
        None,
    ]
    assert result.component_errors["math_verify"] == [None] * 4
    assert (result.num_errors, result.num_timeouts) == (3, 0)
    assert pool.worker_pids == pids  # an exception does not cost a worker


def test_hanging_user_function_is_killed_and_costs_only_its_term(pool: RewardPool) -> None:
    pool.wait_ready()
    restarts = pool.num_restarts
    t0 = time.monotonic()
    result = pool.score([r"HANG \boxed{4}", r"\boxed{4}"], ["4", "4"], [{"bonus": 1.0}] * 2)
    elapsed = time.monotonic() - t0
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + SLACK_S
    assert result.component_timed_out == {
        "math_verify": [False, False], "format": [False, False], "bonus": [True, False],
    }  # fmt: skip
    assert result.timed_out == [True, False]
    assert result.errors == [None, None]  # a timeout is not an error
    assert result.components["math_verify"] == [1.0, 1.0]  # graded despite the hang
    assert result.rewards == pytest.approx([1.1, 1.6], abs=1e-12)
    assert pool.num_restarts == restarts + 1


def test_pool_rejects_bad_examples(pool: RewardPool) -> None:
    with pytest.raises(ValueError, match=r"examples \(1\) and responses \(2\)"):
        pool.score(["a", "b"], ["1", "1"], [{}])
    with pytest.raises(ValueError, match=r"examples\[1\] is list, expected a dict"):
        pool.score(["a", "b"], ["1", "1"], [{}, []])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"examples\[0\] cannot be sent to the grading workers"):
        pool.score(["a"], ["1"], [{"f": lambda: 0}])


def test_default_pool_is_math_verify_alone() -> None:
    responses = [r"\boxed{0.5}", r"\boxed{3}", "no box"]
    golds = [r"\frac{1}{2}", "4", "4"]
    with RewardPool(num_workers=1, timeout_s=10.0) as default:
        assert default.terms == [RewardTerm("math_verify", 1.0)]
        result = default.score(responses, golds)
    expected = [grade_answer(r, g) for r, g in zip(responses, golds)]
    assert expected == [1.0, 0.0, 0.0]
    assert result.rewards == expected
    assert result.components == {"math_verify": expected}
    assert result.errors == [None] * 3
