"""Padded rollout batches: trimming a sub-batch's padding leaves its log-probs unchanged."""

from __future__ import annotations

import torch

from strace_ds.model.batch import collate_rollouts
from strace_ds.model.logprobs import answer_logprobs
from strace_ds.rollout.base import Generation


def test_trimmed_sub_batch_scores_the_same(tiny_policy) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float64).eval()
    gen = torch.Generator().manual_seed(0)
    prompt_lens, answer_lens = [12, 4, 6, 3], [30, 5, 0, 8]
    prompts = [torch.randint(3, 400, (n,), generator=gen).tolist() for n in prompt_lens]
    answers = [torch.randint(3, 400, (n,), generator=gen).tolist() for n in answer_lens]
    batch = collate_rollouts(
        prompts,
        Generation(list(range(4)), answers, [[0.0] * n for n in answer_lens], ["stop"] * 4),
        pad_token_id=0,
    )
    rows = torch.tensor([1, 2, 3])  # without row 0, 6 prompt and 22 answer columns are padding
    part = batch.rows(rows)
    small = part.trimmed()
    assert small.prompt_len == 6 and small.response_ids.shape == (3, 8)
    assert small.input_ids.shape == (3, 14) and torch.equal(small.response_mask.sum(1),
                                                            part.response_mask.sum(1))  # fmt: skip
    with torch.no_grad():
        want, _ = answer_logprobs(model, part)
        got, _ = answer_logprobs(model, small)
    mask = small.response_mask
    torch.testing.assert_close(got[mask], want[:, :8][mask], rtol=0, atol=1e-10)
    assert part.rows(torch.tensor([0])).trimmed().response_ids.shape == (1, 5)
    # An empty answer: one (padding) answer column stays, as collate_rollouts leaves it.
    assert batch.rows(torch.tensor([2])).trimmed().response_ids.shape == (1, 1)
