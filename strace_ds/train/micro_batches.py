"""Micro-batches cut by a token budget instead of a row count.

A micro-batch of rows padded to its longest row costs ``rows * longest`` token slots of
activation memory and compute; with answers of mixed lengths, fixed-size micro-batches padded
to the step's longest answer spend much of both on padding. Sorting the rows by length and
packing them greedily under a budget of token slots groups long rows with long and short with
short, and the budget bounds every micro-batch's memory whatever the lengths.
"""

from __future__ import annotations

from strace_ds.model.packing import first_bin_with_room

__all__ = ["pad_fraction", "token_budget_micro_batches"]


def token_budget_micro_batches(
    lengths: list[int], max_tokens: int, packed: bool = False
) -> list[list[int]]:
    """Row indices per micro-batch whose forward computes at most ``max_tokens`` token slots.

    Rows are taken longest first (ties by index) and appended to the open micro-batch while
    its slots still fit; the first row of a micro-batch is its longest, so a row longer than
    ``max_tokens`` on its own gets a micro-batch to itself. Every row appears exactly once.
    Padded (default), a micro-batch of ``n`` rows costs ``n * longest`` slots. Packed
    (:mod:`strace_ds.model.packing`), it costs ``bins * longest``: each row goes into the first
    bin of ``longest`` tokens with room (:func:`strace_ds.model.packing.first_bin_with_room`, the
    rule :func:`strace_ds.model.packing.first_fit_bins` places them by), so short rows ride
    along.

    Args:
        lengths: tokens per row (prompt + answer), each ``>= 0``.
        max_tokens: the budget of token slots per micro-batch, ``>= 1``.
        packed: count slots as the packed layout computes them.

    Returns:
        Micro-batches of row indices, longest rows first, each in decreasing length.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in lengths):
        raise ValueError("lengths must be ints >= 0 (tokens per row)")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    free: list[int] = []  # packed: the room left in each bin of the open micro-batch
    for i in order:
        n = lengths[i]
        if batches:
            open_batch, width = batches[-1], lengths[batches[-1][0]]
            if packed:
                room = first_bin_with_room(free, n)
                if room is not None:  # fits into a bin: no new slot
                    free[room] -= n
                    open_batch.append(i)
                    continue
                if (len(free) + 1) * width <= max_tokens:  # one more bin
                    free.append(width - n)
                    open_batch.append(i)
                    continue
            elif (len(open_batch) + 1) * width <= max_tokens:
                open_batch.append(i)
                continue
        batches.append([i])
        free = [0]  # its longest row fills the new micro-batch's first bin
    return batches


def pad_fraction(lengths: list[int], micro_batches: list[list[int]]) -> float:
    """Share of padded slots: ``1 - sum(lengths) / sum_b len(b) * max(lengths[b])``.

    0 when every micro-batch's rows have one length; 0 for an empty batch.
    """
    slots = sum(len(b) * max(lengths[i] for i in b) for b in micro_batches if b)
    used = sum(lengths[i] for b in micro_batches for i in b)
    return 0.0 if slots == 0 else 1.0 - used / slots
