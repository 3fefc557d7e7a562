"""The synthetic arithmetic task: splits, determinism, correctness, difficulty knobs."""

from __future__ import annotations

import operator
import random
import re

import pytest

from strace_ds.data.arithmetic import (
    INSTRUCTION,
    KINDS,
    ArithmeticConfig,
    arithmetic_dataset,
    draw_problem,
    solve,
    split_of,
)

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _expected(kind: str, ops: list[int]) -> int:
    """Independent re-computation of the gold answer (not via ``solve``)."""
    return {
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "add_sub": lambda a, b, c: a + b - c,
        "mul_add": lambda a, b, c: a * b + c,
    }[kind](*ops)


def test_splits_are_disjoint_across_seeds() -> None:
    train = arithmetic_dataset("train", size=3000, seed=0)
    test = arithmetic_dataset("test", size=1000, seed=1)
    train_q = {ex.meta["question"] for ex in train.examples}
    test_q = {ex.meta["question"] for ex in test.examples}
    assert train_q.isdisjoint(test_q)
    assert all(split_of(q) == "train" for q in train_q)
    assert all(split_of(q) == "test" for q in test_q)
    assert (train.source, test.source) == ("synthetic:train", "synthetic:test")
    assert len(train) == 3000 and len(test) == 1000 and train.skipped == 0


def test_test_share_matches_fraction() -> None:
    rng = random.Random(123)
    cfg = ArithmeticConfig()
    share = sum(split_of(draw_problem(cfg, rng).meta["question"]) == "test"
                for _ in range(5000)) / 5000
    # Binomial(5000, 0.2): std 0.0057, so +-0.025 is over 4 sigma.
    assert abs(share - 0.2) < 0.025


def test_same_seed_same_problems_other_seed_other_problems() -> None:
    a = arithmetic_dataset("train", size=300, seed=7)
    b = arithmetic_dataset("train", size=300, seed=7)
    c = arithmetic_dataset("train", size=300, seed=8)
    assert [(e.prompt, e.answer, e.meta) for e in a.examples] == [
        (e.prompt, e.answer, e.meta) for e in b.examples
    ]
    same = sum(x.prompt == y.prompt for x, y in zip(a.examples, c.examples))
    assert same < 5


def test_answers_and_solutions_are_correct() -> None:
    ds = arithmetic_dataset("test", size=1000, seed=3)
    assert {ex.meta["kind"] for ex in ds.examples} == set(KINDS)
    for ex in ds.examples:
        kind, ops = ex.meta["kind"], ex.meta["operands"]
        gold = _expected(kind, ops)
        assert ex.answer == str(gold) and gold >= 0
        assert ex.prompt == ex.meta["question"] + INSTRUCTION
        assert ex.meta["solution"].endswith(f"The answer is \\boxed{{{gold}}}.")
        # every operand is stated in the question, and every equation in the solution holds
        numbers = [int(n) for n in re.findall(r"\d+", ex.meta["question"])]
        assert sorted(numbers) == sorted(ops)
        for lhs, op, rhs, res in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", ex.meta["solution"]):
            assert _OPS[op](int(lhs), int(rhs)) == int(res)
        assert ex.meta["solution"].count("=") == (2 if kind in ("add_sub", "mul_add") else 1)


def test_solution_text_is_exact() -> None:
    assert solve("add", [3, 5]) == (8, "3 + 5 = 8. The answer is \\boxed{8}.")
    assert solve("add_sub", [12, 9, 5]) == (
        16, "12 + 9 = 21. 21 - 5 = 16. The answer is \\boxed{16}."
    )
    assert solve("mul_add", [3, 4, 5]) == (
        17, "3 * 4 = 12. 12 + 5 = 17. The answer is \\boxed{17}."
    )


def test_difficulty_knobs_bound_the_numbers() -> None:
    cfg = ArithmeticConfig(max_add=3, max_sub=4, max_mul=2, kinds=("add", "sub", "mul"),
                           weights=(1.0, 1.0, 0.0))
    ds = arithmetic_dataset("train", size=200, seed=0, config=cfg)
    kinds = {ex.meta["kind"] for ex in ds.examples}
    assert kinds == {"add", "sub"}  # mul has weight 0
    for ex in ds.examples:
        a, b = ex.meta["operands"]
        if ex.meta["kind"] == "add":
            assert 1 <= a <= 3 and 1 <= b <= 3
        else:
            assert 2 <= a <= 4 and 1 <= b <= a


def test_config_round_trips_through_dict() -> None:
    cfg = ArithmeticConfig(max_add=50, kinds=("add", "mul"), weights=(2.0, 1.0))
    assert ArithmeticConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "val"}, "split must be one of"),
        ({"size": 0}, "size must be >= 1"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        arithmetic_dataset(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kinds": ("add", "div"), "weights": (1.0, 1.0)}, "kinds must be a non-empty subset"),
        ({"kinds": ("add",), "weights": (1.0, 1.0)}, "one non-negative weight per kind"),
        ({"max_mul": 1}, "max_mul must be >= 2"),
        ({"test_fraction": 1.0}, r"test_fraction must be in \(0, 1\)"),
    ],
)
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ArithmeticConfig(**kwargs)


def test_exhausted_question_space_raises_clearly() -> None:
    # 128 possible questions (8 names x 8 items x 2 templates), none hashed into a test
    # share of 1e-9: the generator must give up with a message naming the fix.
    cfg = ArithmeticConfig(max_add=1, kinds=("add",), weights=(1.0,), test_fraction=1e-9)
    with pytest.raises(ValueError, match="raise ArithmeticConfig.test_fraction"):
        arithmetic_dataset("test", size=1, seed=0, config=cfg)
