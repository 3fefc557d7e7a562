"""Prompts that leave no room for an answer are refused at start-up (or dropped, counted)."""

from __future__ import annotations

import types

import pytest

from strace_ds.data.prompts import fit_to_context, model_context
from strace_ds.data.types import PromptDataset, PromptExample


def _data(lengths):
    examples = [PromptExample(prompt=f"q{i}", answer="1", meta={"row": 10 + i})
                for i in range(len(lengths))]  # fmt: skip
    return PromptDataset(examples=examples, source="file.jsonl"), [[7] * n for n in lengths]


def test_long_prompt_named_with_row_length_and_fix():
    data, ids = _data([5, 600, 8019, 100])
    with pytest.raises(ValueError) as err:
        fit_to_context(data, ids, context=512, max_new_tokens=40)
    msg = str(err.value)
    assert msg == (
        "data: 2 of 4 prompts of file.jsonl are longer than the model's context (512 "
        "positions) minus max_new_tokens (40) = 472 tokens, e.g. row 11 with 600 tokens; "
        "shorten or remove them, lower --max_new_tokens, or add --drop_long_prompts true to "
        "skip them"
    )


def test_drop_keeps_order_and_counts():
    data, ids = _data([5, 600, 472, 473])
    kept, kept_ids, dropped = fit_to_context(data, ids, 512, 40, drop=True)
    assert dropped == 2  # 472 fits exactly (472 + 40 = 512), 473 does not
    assert [ex.meta["row"] for ex in kept.examples] == [10, 12]
    assert [len(x) for x in kept_ids] == [5, 472]
    assert kept.source == "file.jsonl" and len(data) == 4  # the input is not modified


def test_nothing_to_check():
    data, ids = _data([5, 9])
    assert fit_to_context(data, ids, 512, 40) == (data, ids, 0)
    assert fit_to_context(data, [[1] * 10**5], None, 40)[2] == 0
    assert model_context(types.SimpleNamespace(max_position_embeddings=512)) == 512
    assert model_context(types.SimpleNamespace()) is None
