"""Packed rows (``strace_ds.model.packing``): the layout, with no model. Equality of the
packed forward with the padded one: ``tests/integration/test_packing.py``."""

from __future__ import annotations

import pytest
import torch

from strace_ds.model.batch import collate_rollouts
from strace_ds.model.packing import first_fit_bins, pack_rows
from strace_ds.rollout.base import Generation


def _batch(prompt_lens, answer_lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 90, (n,), generator=g).tolist() for n in prompt_lens]
    answers = [torch.randint(3, 90, (n,), generator=g).tolist() for n in answer_lens]
    generation = Generation(
        prompt_index=list(range(len(prompts))), token_ids=answers,
        logprobs=[[0.0] * len(a) for a in answers], finish_reasons=["stop"] * len(answers),
    )  # fmt: skip
    return collate_rollouts(prompts, generation, pad_token_id=0), prompts, answers


def test_first_fit_puts_every_row_once_within_the_width() -> None:
    lengths = [7, 3, 5, 2, 9, 4, 1, 6]
    bins = first_fit_bins(lengths, 9)
    assert sorted(i for b in bins for i in b) == list(range(8))
    assert all(sum(lengths[i] for i in b) <= 9 for b in bins)
    assert bins == [[4], [0, 3], [7, 1], [2, 5], [6]]  # longest first, first bin with room
    assert len(bins) == 5 and sum(lengths) / (len(bins) * 9) == pytest.approx(37 / 45)
    assert first_fit_bins([12, 3], 9) == [[0], [1]]  # too long: a bin of its own


def test_rows_are_laid_end_to_end_with_positions_per_row() -> None:
    batch, prompts, answers = _batch([2, 5, 1, 1], [3, 1, 4, 0])
    pack = pack_rows(batch, filler_id=99)  # rows of 5, 6, 5, 1 tokens: the width is 6
    assert pack.input_ids.shape == (3, 6) and pack.slots == 18
    assert pack.position_ids.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 0],
                                          [0, 1, 2, 3, 4, 5]]  # fmt: skip
    assert pack.input_ids[0].tolist() == prompts[1] + answers[1]
    assert pack.input_ids[1].tolist() == prompts[0] + answers[0] + prompts[3]
    assert pack.input_ids[2].tolist() == prompts[2] + answers[2] + [99]  # filler: row 2's run
    flat = pack.input_ids.flatten()
    # the state at predict_index predicts the token right after it: the answer token
    assert torch.equal(flat[pack.predict_index + 1], pack.targets)
    assert pack.targets.tolist() == answers[1] + answers[0] + answers[2]
    assert pack.answer_rows.tolist() == [1, 0, 0, 0, 2, 2, 2, 2]
    assert pack.answer_cols.tolist() == [0, 0, 1, 2, 0, 1, 2, 3]
    assert torch.equal(batch.response_ids[pack.answer_rows, pack.answer_cols], pack.targets)


def test_one_row_per_bin_starts_each_row_at_column_0_with_plain_positions() -> None:
    batch, prompts, answers = _batch([2, 5, 1, 1], [3, 1, 4, 0])
    pack = pack_rows(batch, filler_id=99, share_bins=False)  # rows of 5, 6, 5, 2 tokens
    assert pack.input_ids.shape == (4, 6) and pack.slots == 24
    # one run per row, padding after it: the decoder needs no mask (plain causal attention)
    assert pack.position_ids.tolist() == [list(range(6))] * 4
    for i in range(4):
        row = prompts[i] + answers[i]
        assert pack.input_ids[i].tolist() == row + [99] * (6 - len(row))
    assert torch.equal(pack.input_ids.flatten()[pack.predict_index + 1], pack.targets)
    assert pack.answer_rows.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]  # in the batch's order
    assert torch.equal(batch.response_ids[pack.answer_rows, pack.answer_cols], pack.targets)


def test_unpack_puts_each_value_at_its_row_and_column_with_gradient() -> None:
    batch, _, answers = _batch([4, 2, 3], [5, 0, 2], seed=1)
    pack = pack_rows(batch)
    values = torch.arange(1.0, len(pack.targets) + 1, requires_grad=True)
    out = pack.unpack(values)
    assert out.shape == batch.response_ids.shape
    assert torch.equal(out != 0, batch.response_mask)  # every answer token, 0 on padding
    assert torch.equal(out[pack.answer_rows, pack.answer_cols], values.detach())
    (out * torch.arange(out.numel()).view(out.shape)).sum().backward()
    assert torch.equal(values.grad, (pack.answer_rows * out.shape[1] + pack.answer_cols).float())


def test_a_row_without_a_prompt_cannot_be_packed() -> None:
    batch, _, _ = _batch([2, 2], [2, 1])
    batch.attention_mask[0, : batch.prompt_len] = 0
    with pytest.raises(ValueError, match="empty prompt"):
        pack_rows(batch)
