"""Padding-free micro-batches: a :class:`~strace_ds.model.batch.RolloutBatch` laid end to end.

A padded micro-batch of ``N`` rows costs ``N x (P + R)`` token slots: every prompt is padded to
the longest prompt and every answer to the longest answer, so a row with a short prompt and a
long answer next to one with a long prompt and a short answer pays twice. Packing puts each
row's real tokens (``[prompt | answer]``, no padding) one after the other into ``B`` bins of
``W`` columns, ``W`` the micro-batch's longest row (first fit, longest rows first), and gives
each token its position within its own row::

    bin 0:  p0 p0 a0 a0 a0 | p3 a3 a3 | f f        positions 0 1 2 3 4 | 0 1 2 | 3 4
    bin 1:  p1 p1 p1 a1 a1 a1 | p2 a2 a2 a2        positions 0 1 2 3 4 5 | 0 1 2 3

The tail of a bin that no row fills holds filler tokens (``f``) that continue the positions of
the bin's last row: they come after every real token, so nothing real attends to them, and
nothing reads their states. Hugging Face decoders called with ``attention_mask=None`` and such
position ids attend within each run of consecutive positions only
(``transformers.masking_utils``: a block-diagonal causal mask for eager/SDPA, variable-length
kernels for flash attention), so every row sees exactly the tokens it sees padded, at the same
positions: the hidden states equal the padded ones to rounding, and the attention cost of a
bin is that of one padded row. :func:`~strace_ds.model.logprobs.packing_unsupported_reason`
checks a model really does this before the trainer relies on it.

**One row per bin** (``share_bins=False``, the layout of every unpacked forward,
:func:`~strace_ds.model.logprobs.answer_logprobs`): each row starts at column 0 and its
padding follows it, so the position ids are ``0 .. W-1`` in every row, no run restarts, and
the decoder needs no mask at all: its attention is plain causal attention, which attention
kernels run without reading a mask and without computing the blocks above the diagonal
(PyTorch's SDPA ``is_causal`` path). The masked ``[left-padded prompt | right-padded answer]``
layout computes the same states to rounding but pays for every masked score: on the tiny
policy at 64 rows x ~524 tokens, float32, one CPU thread, its decoder forward + backward took
1.13-1.18x as long (five interleaved pairs). This needs nothing of the model beyond being
causal, so no check is made.

The answer token ``j`` of row ``i`` is predicted by the hidden state at flat index
``bin_i * W + offset_i + prompt_i + j - 1`` (``predict_index``); its log-prob goes back to
``[i, j]`` of the padded ``[N, R]`` layout (``answer_rows``, ``answer_cols``), padding 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strace_ds.model.batch import RolloutBatch

__all__ = ["PackedRows", "first_bin_with_room", "first_fit_bins", "pack_rows", "packed_slots"]


@dataclass
class PackedRows:
    """``N`` rows packed into ``B`` bins of ``W`` tokens, and where each answer token sits."""

    input_ids: torch.Tensor  # [B, W]
    position_ids: torch.Tensor  # [B, W] positions within each row (filler: its own run)
    predict_index: torch.Tensor  # [M] flat index into B * W of the state predicting each token
    targets: torch.Tensor  # [M] the answer tokens
    answer_rows: torch.Tensor  # [M] the row of each answer token in the padded layout
    answer_cols: torch.Tensor  # [M] its column j in the padded [N, R] answer layout
    shape: tuple[int, int]  # (N, R): the padded answer layout the log-probs go back to

    @property
    def slots(self) -> int:
        """Token slots computed: ``B x W``."""
        return self.input_ids.numel()

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """``values [M]`` (one per answer token) as ``[N, R]``, 0 on padding; differentiable."""
        index = (self.answer_rows.to(values.device), self.answer_cols.to(values.device))
        return values.new_zeros(self.shape).index_put(index, values)


def first_bin_with_room(free: list[int], n: int) -> int | None:
    """The first-fit rule, the one place it is written: the index of the first bin whose
    ``free`` room holds ``n`` tokens, or None (the caller opens a bin). Used by
    :func:`first_fit_bins` and by the packed token budget
    (:func:`strace_ds.train.micro_batches.token_budget_micro_batches`), so the budget counts
    exactly the bins the forward will build."""
    return next((b for b, room in enumerate(free) if n <= room), None)


def first_fit_bins(lengths: list[int], width: int) -> list[list[int]]:
    """Rows into bins of ``width`` tokens: longest first (ties by index), each into the first
    bin with room, else a new bin. Every row appears once; a row longer than ``width`` gets a
    bin of its own (callers pass ``width >= max(lengths)``)."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        b = first_bin_with_room(free, lengths[i])
        if b is None:
            bins.append([i])
            free.append(width - lengths[i])
        else:
            bins[b].append(i)
            free[b] -= lengths[i]
    return bins


def packed_slots(lengths: list[int]) -> int:
    """Token slots the packed forward of rows of ``lengths`` computes: bins x the longest row
    (:func:`pack_rows`'s layout)."""
    width = max(lengths, default=0)
    return len(first_fit_bins(lengths, width)) * width


def pack_rows(batch: RolloutBatch, filler_id: int = 0, share_bins: bool = True) -> PackedRows:
    """The rows of ``batch`` packed into bins as wide as its longest row (module docstring);
    ``share_bins=False``: one row per bin, in ``batch``'s order (no mask needed).

    Each row's tokens are its attention-masked ones, a contiguous ``[prompt | answer]`` run in
    the padded layout (left-padded prompt, right-padded answer). Answer tokens are those of
    ``response_mask``; the first answer token of a row with an empty prompt has no predicting
    state and is refused. ``filler_id``: the token of the bins' unused tails (any id of the
    vocabulary: nothing attends to them and nothing reads their states).
    """
    mask = batch.attention_mask.bool()
    lengths = mask.sum(dim=1).tolist()
    prompt_lengths = mask[:, : batch.prompt_len].sum(dim=1).tolist()
    answer_lengths = batch.response_mask.sum(dim=1).tolist()
    if any(a and not p for p, a in zip(prompt_lengths, answer_lengths)):
        raise ValueError("pack_rows: a row with an answer and an empty prompt")
    if any(n != p + a for n, p, a in zip(lengths, prompt_lengths, answer_lengths)):
        raise ValueError("pack_rows: attention_mask is not the prompt's and the answer's tokens")
    width = max(1, max(lengths, default=1))
    bins = first_fit_bins(lengths, width) if share_bins else [[i] for i in range(len(lengths))]
    input_ids = torch.full((len(bins), width), filler_id, dtype=batch.input_ids.dtype)
    position_ids = torch.zeros((len(bins), width), dtype=torch.long)
    predict, rows, cols = [], [], []
    for b, members in enumerate(bins):
        offset = 0
        for i in members:
            n, p, a = lengths[i], prompt_lengths[i], answer_lengths[i]
            input_ids[b, offset : offset + n] = batch.input_ids[i][mask[i]]
            position_ids[b, offset : offset + n] = torch.arange(n)
            start = b * width + offset + p - 1  # the state predicting answer token 0
            predict.append(torch.arange(start, start + a))
            rows.append(torch.full((a,), i, dtype=torch.long))
            cols.append(torch.arange(a))
            offset += n
        # filler continues the last row's run: a bin of one row is then one run (no mask)
        last = lengths[members[-1]] if members else 0
        position_ids[b, offset:] = torch.arange(last, last + width - offset)
    answer_rows, answer_cols = torch.cat(rows), torch.cat(cols)
    return PackedRows(
        input_ids=input_ids,
        position_ids=position_ids,
        predict_index=torch.cat(predict),
        targets=batch.response_ids[answer_rows, answer_cols],
        answer_rows=answer_rows,
        answer_cols=answer_cols,
        shape=tuple(batch.response_ids.shape),
    )
