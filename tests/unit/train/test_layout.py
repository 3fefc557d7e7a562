"""BatchLayout: the step's geometry, against the arithmetic written out by hand."""

from __future__ import annotations

import itertools

import pytest

from strace_ds.train.layout import BatchLayout


def test_sizes_by_hand():
    # 32 prompts x 8 answers on 2 ranks: 128 rows per rank, 2 mini-batches of 64, micro 16 -> 4
    layout = BatchLayout(prompts_per_step=32, group_size=8, mini_batches=2, micro_batch_size=16,
                         world=2)  # fmt: skip
    assert (layout.prompts_per_rank, layout.rows_per_rank, layout.rows_per_mini_batch) == (
        16, 128, 64)  # fmt: skip
    assert (layout.micro, layout.accumulation) == (16, 4)
    assert layout.aligned and layout.share == 8
    assert [layout.chunk_offset(r) for r in (0, 1)] == [0, 8]
    # micro_batch_size above a mini-batch: one micro-batch of the whole mini-batch
    big = BatchLayout(32, 8, 2, 1000, world=2)
    assert (big.micro, big.accumulation) == (64, 1)


def test_prompt_positions_tile_the_step_and_keep_global_mini_batches():
    for prompts, mini, world in itertools.product((4, 6, 8, 12), (1, 2, 4), (1, 2)):
        layout = BatchLayout(prompts, 2, mini, 4, world)
        step = 3
        per_rank = [layout.prompt_positions(step, r) for r in range(world)]
        flat = sorted(p for ps in per_rank for p in ps)
        if prompts % world:
            continue
        # every prompt of the step exactly once, across the ranks
        assert flat == list(range((step - 1) * prompts, step * prompts)), (prompts, mini, world)
        if layout.aligned:
            # global mini-batch j = rank slices of chunk j, the same set as on one rank
            one = BatchLayout(prompts, 2, mini, 4, 1).prompt_positions(step, 0)
            chunk = prompts // mini
            for j in range(mini):
                lo, hi = j * layout.share, (j + 1) * layout.share
                got = sorted(p for ps in per_rank for p in ps[lo:hi])
                assert got == one[j * chunk:(j + 1) * chunk]
        else:
            first = (step - 1) * prompts
            assert per_rank[0] == list(range(first, first + prompts // world))


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ((30, 8, 2, 64, 4),
         r"prompts_per_step \(30\) must be divisible by the number of ranks \(4\)"),
        ((4, 3, 5, 64, 1), r"mini_batches \(5\) must divide the rows per rank per step"),
        ((8, 8, 2, 5, 1), r"micro_batch_size \(5\) must divide the rows per mini-batch on each "
                          r"rank \(32\); try 1, 2, 4, 8, 16, 32"),
    ],
)
def test_check_names_the_size_and_the_fix(sizes, message):
    with pytest.raises(ValueError, match=message):
        BatchLayout(*sizes).check()
    BatchLayout(8, 8, 2, 16, 1).check()
