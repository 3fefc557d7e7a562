"""Token-budget micro-batches: hand-worked packings and the invariants on random lengths."""

from __future__ import annotations

import random

import pytest

from strace_ds.train.micro_batches import pad_fraction, token_budget_micro_batches


def test_hand_worked_packing() -> None:
    lengths = [300, 1000, 250, 900, 1000, 100]
    # Longest first: rows 1, 4 (1000 each, ties by index), 3 (900), 0, 2, 5.
    # [1, 4]: 2 * 1000 = 2000 <= 2000; adding row 3 would cost 3 * 1000 = 3000.
    # [3, 0]: 2 * 900 = 1800; adding row 2 would cost 3 * 900 = 2700.
    # [2, 5]: 2 * 250 = 500.
    assert token_budget_micro_batches(lengths, 2000) == [[1, 4], [3, 0], [2, 5]]
    # Slots 2000 + 1800 + 500 = 4300 for 3550 tokens: 750 / 4300 padded.
    assert pad_fraction(lengths, [[1, 4], [3, 0], [2, 5]]) == pytest.approx(750 / 4300, abs=1e-15)
    # One micro-batch of all six rows: 6 * 1000 slots for 3550 tokens.
    assert pad_fraction(lengths, [list(range(6))]) == pytest.approx(1 - 3550 / 6000, abs=1e-15)


def test_a_row_over_the_budget_is_alone() -> None:
    assert token_budget_micro_batches([50, 5000, 40], 1000) == [[1], [0, 2]]
    assert token_budget_micro_batches([5000, 6000], 1000) == [[1], [0]]


def test_edge_cases() -> None:
    assert token_budget_micro_batches([], 10) == []
    assert pad_fraction([], []) == 0.0
    assert token_budget_micro_batches([0, 0, 0], 1) == [[0, 1, 2]]  # empty rows cost nothing
    assert pad_fraction([4, 4], [[0, 1]]) == 0.0


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100"])
def test_bad_budget_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        token_budget_micro_batches([1, 2], bad)


@pytest.mark.parametrize("bad", [[-1], [1.5], [True]])
def test_bad_lengths_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="lengths"):
        token_budget_micro_batches(bad, 10)


@pytest.mark.parametrize("seed", range(20))
def test_invariants_on_random_lengths(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(0, 3000) for _ in range(rng.randint(1, 64))]
    budget = rng.randint(1, 12000)
    batches = token_budget_micro_batches(lengths, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every row exactly once
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for k, b in enumerate(batches):
        longest = lengths[b[0]]
        assert len(b) == 1 or len(b) * longest <= budget
        if k + 1 < len(batches):  # greedy: the next row did not fit
            assert (len(b) + 1) * longest > budget
    assert 0.0 <= pad_fraction(lengths, batches) <= pad_fraction(lengths, [flat]) + 1e-12


@pytest.mark.parametrize("seed", range(20))
def test_packed_budget_counts_the_bins_the_packing_makes(seed: int) -> None:
    """``packed=True``: a micro-batch's slots are its first-fit bins x its longest row, the
    layout :func:`strace_ds.model.packing.first_fit_bins` makes; the budget holds and short
    rows ride along, so no more micro-batches than padded."""
    from strace_ds.model.packing import first_fit_bins

    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 64))]
    budget = rng.randint(300, 3000)
    batches = token_budget_micro_batches(lengths, budget, packed=True)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    for b in batches:
        local = [lengths[i] for i in sorted(b)]  # as the updater hands them to the packing
        slots = len(first_fit_bins(local, max(local))) * max(local)
        assert slots <= budget
    assert len(batches) <= len(token_budget_micro_batches(lengths, budget))


def test_packed_budget_example() -> None:
    # width 10: [10], then 6+4 share a bin, 3+3+3 another: 3 bins = 30 slots
    assert token_budget_micro_batches([10, 6, 4, 3, 3, 3], 30, packed=True) == [[0, 1, 2, 3, 4, 5]]
    assert token_budget_micro_batches([10, 6, 4, 3, 3, 3], 30) == [[0, 1, 2], [3, 4, 5]]
    assert token_budget_micro_batches([10, 6, 4, 3, 3, 3], 20, packed=True) == [[0, 1, 2],
                                                                                 [3, 4, 5]]
