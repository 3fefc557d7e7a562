"""Packed rows through the tiny Qwen3 policy: the same log-probs, entropies and parameter
gradients as the padded layout (float64, fused and full-logits heads, tied and untied), and
the check that refuses packing for a model whose attention crosses rows."""

from __future__ import annotations

import warnings

import pytest
import torch

from strace_ds.model.batch import RolloutBatch, collate_rollouts
from strace_ds.model.logprobs import answer_logprobs, packing_unsupported_reason
from strace_ds.model.packing import pack_rows
from strace_ds.rollout.base import Generation


def _load(policy_dir, tied: bool, dtype: torch.dtype) -> torch.nn.Module:
    """The tiny policy, with its head tied to the embedding or an untied copy of it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(policy_dir)
    config.tie_word_embeddings = tied
    model = AutoModelForCausalLM.from_pretrained(policy_dir, config=config, dtype=dtype)
    if not tied:
        with torch.no_grad():
            model.lm_head.weight.copy_(model.get_input_embeddings().weight * 1.1)
    return model.eval()


def _batch(vocab: int, seed: int) -> RolloutBatch:
    """Six rows of mixed prompt and answer lengths (one empty answer): short rows share bins."""
    gen = torch.Generator().manual_seed(seed)
    prompt_lens, answer_lens = [5, 9, 3, 7, 2, 4], [23, 0, 40, 11, 6, 3]
    prompts = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in prompt_lens]
    answers = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in answer_lens]
    generation = Generation(
        prompt_index=list(range(6)), token_ids=answers,
        logprobs=[[0.0] * len(a) for a in answers], finish_reasons=["length"] * 6,
    )  # fmt: skip
    return collate_rollouts(prompts, generation, pad_token_id=0)


def _loss(logp: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
    """Advantage-weighted log-probs over the answer tokens (a policy-gradient shape)."""
    adv = torch.linspace(-1.0, 2.0, len(batch), dtype=logp.dtype)[:, None]
    return -(logp * adv * batch.response_mask).sum() / batch.response_mask.sum()


TEMPERATURE = 0.7


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_packed_rows_give_the_padded_logprobs_and_gradients(tiny_policy, tied, fused) -> None:
    model = _load(tiny_policy, tied, torch.float64)
    batch = _batch(model.config.vocab_size, seed=3)
    pack = pack_rows(batch)
    assert pack.input_ids.shape[0] < len(batch) and pack.slots < batch.input_ids.numel()
    results = []
    for packed in (False, True):
        model.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unfused path says so
            logp, entropy = answer_logprobs(model, batch, TEMPERATURE, chunk_size=16,
                                            fused=fused, entropy_grad=True, packed=packed)
        (_loss(logp, batch) + 0.1 * (entropy * batch.response_mask).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((logp.detach(), entropy.detach(), grads))
    (logp0, ent0, g0), (logp1, ent1, g1) = results
    mask = batch.response_mask
    torch.testing.assert_close(logp1[mask], logp0[mask], rtol=0, atol=1e-10)
    torch.testing.assert_close(ent1[mask], ent0[mask], rtol=0, atol=1e-10)
    assert float(logp1[~mask].abs().sum()) == 0.0  # padding is 0, nothing computed there
    assert float(g0.norm()) > 1e-3
    assert float((g1 - g0).norm() / g0.norm()) < 1e-10


def test_the_tiny_policy_attends_within_each_packed_row(tiny_policy) -> None:
    model = _load(tiny_policy, True, torch.float32).train()
    assert packing_unsupported_reason(model) is None
    assert model.training  # its mode is restored


class _AcrossRows(torch.nn.Module):
    """A causal LM that numbers positions by column: packed rows would see each other."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        if attention_mask is None:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, **kwargs)


def test_a_model_whose_attention_crosses_rows_is_refused(tiny_policy) -> None:
    leaky = _AcrossRows(_load(tiny_policy, True, torch.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no separate head: the unfused path
        reason = packing_unsupported_reason(leaky)
    assert reason is not None and "does not stay within each row" in reason, reason
