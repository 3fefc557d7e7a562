"""The chain task: correctness, splits, knobs, the spec parser, the teacher and the registry."""

from __future__ import annotations

import random
import re

import pytest

from strace_ds.data.arithmetic import INSTRUCTION, split_of
from strace_ds.data.chain import (
    ChainConfig,
    chain_dataset,
    chain_solution,
    parse_chain_spec,
    teacher_slips,
)
from strace_ds.data.tasks import GENERATED_TASKS, generated_dataset, generated_task

_EQ = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.")


def _replay(start: int, ops: list[list]) -> int:
    """Independent re-computation of the gold from the stored operations."""
    value = start
    for op, b in ops:
        value = {"+": value + b, "-": value - b, "*": value * b}[op]
    return value


def test_answers_are_correct_and_solutions_consistent() -> None:
    cfg = ChainConfig()
    for ex in chain_dataset("train", size=300, seed=3).examples:
        assert ex.prompt.endswith(INSTRUCTION)
        assert int(ex.answer) == _replay(ex.meta["start"], ex.meta["ops"])
        eqs = _EQ.findall(ex.meta["solution"])
        assert len(eqs) == cfg.decisive
        value = ex.meta["start"]
        for (a, op, b, c), (op0, b0) in zip(eqs, ex.meta["ops"]):
            assert (int(a), op, int(b)) == (value, op0, b0)
            value = int(c)
            assert 0 <= value <= cfg.max_value
        assert ex.meta["solution"].endswith(f"\\boxed{{{ex.answer}}}.")


def test_knobs_set_decisions_and_length() -> None:
    terse = chain_dataset("train", 50, 0, ChainConfig(decisive=2, filler=0)).examples
    long = chain_dataset("train", 50, 0, ChainConfig(decisive=6, filler=3)).examples
    assert all(len(_EQ.findall(e.meta["solution"])) == 2 for e in terse)
    assert all(len(_EQ.findall(e.meta["solution"])) == 6 for e in long)
    mean = lambda xs: sum(len(e.meta["solution"]) for e in xs) / len(xs)  # noqa: E731
    assert mean(long) > 4 * mean(terse)
    # no multiplications when max_factor < 2
    flat = chain_dataset("train", 100, 0, ChainConfig(max_factor=0)).examples
    assert all(op != "*" for e in flat for op, _ in e.meta["ops"])


def test_phrasings_fork_without_changing_the_gold() -> None:
    cfg = ChainConfig(filler=3, phrasings=3)
    ex = chain_dataset("train", 1, 0, cfg).examples[0]
    ops = [tuple(o) for o in ex.meta["ops"]]
    texts = {chain_solution(ex.meta["start"], ops, cfg, random.Random(i))[1] for i in range(20)}
    golds = {chain_solution(ex.meta["start"], ops, cfg, random.Random(i))[0] for i in range(20)}
    assert len(texts) > 5 and golds == {int(ex.answer)}
    one = ChainConfig(filler=3, phrasings=1)
    assert len({chain_solution(1, [("+", 2)], one, random.Random(i))[1] for i in range(5)}) == 1


def test_slips_propagate_consistently() -> None:
    cfg = ChainConfig(filler=0)
    value, text = chain_solution(5, [("+", 3), ("*", 2)], cfg, slips=[1, 0])
    assert text == "5 + 3 = 9. 9 * 2 = 18. The answer is \\boxed{18}."
    assert value == 18
    rng = random.Random(0)
    slips = [s for _ in range(2000) for s in teacher_slips(3, 0.3, rng)]
    share = sum(s != 0 for s in slips) / len(slips)
    assert abs(share - 0.3) < 0.03 and set(slips) <= {-2, -1, 0, 1, 2}


def test_splits_disjoint_and_deterministic() -> None:
    train = chain_dataset("train", 1000, 0)
    test = chain_dataset("test", 300, 1)
    assert {e.meta["question"] for e in train.examples}.isdisjoint(
        {e.meta["question"] for e in test.examples})
    assert all(split_of(e.meta["question"]) == "test" for e in test.examples)
    again = chain_dataset("train", 1000, 0)
    assert [e.prompt for e in again.examples] == [e.prompt for e in train.examples]
    assert [e.prompt for e in chain_dataset("train", 50, 1).examples] != [
        e.prompt for e in train.examples[:50]]
    assert (train.source, test.source) == ("chain:train", "chain:test")


def test_spec_parser() -> None:
    assert parse_chain_spec("chain") == ChainConfig()
    cfg = parse_chain_spec("chain:decisive=5, filler=1,slip_rate=0.25")
    assert (cfg.decisive, cfg.filler, cfg.slip_rate) == (5, 1, 0.25)
    with pytest.raises(ValueError, match="decisiv"):
        parse_chain_spec("chain:decisiv=5")
    with pytest.raises(ValueError, match="filler='x' is not a int"):
        parse_chain_spec("chain:filler=x")
    with pytest.raises(ValueError, match="ChainConfig.decisive must be in 1..12"):
        parse_chain_spec("chain:decisive=0")


@pytest.mark.parametrize("kwargs, match", [
    ({"filler": 9}, "filler"), ({"phrasings": 0}, "phrasings"), ({"max_value": 5}, "max_value"),
    ({"max_operand": 99}, "max_operand"), ({"slip_rate": 1.0}, "slip_rate"),
    ({"max_factor": 10}, "max_factor"), ({"test_fraction": 0.0}, "test_fraction"),
])  # fmt: skip
def test_bad_config_names_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ChainConfig(**kwargs)


def test_registry_routes_specs() -> None:
    assert set(GENERATED_TASKS) == {"synthetic", "chain"}
    assert generated_task("chain:filler=0") is GENERATED_TASKS["chain"]
    assert generated_task("my/hub-dataset") is None and generated_task(None) is None
    data = generated_dataset("chain:decisive=2", "test", 5, 0)
    assert data.source == "chain:test" and len(data) == 5
    assert all(len(_EQ.findall(e.meta["solution"])) == 2 for e in data.examples)
    with pytest.raises(ValueError, match="takes no options"):
        generated_dataset("synthetic:x=1", "train", 5, 0)
