"""The layouts of ``answer_logprobs`` through the tiny Qwen3 policy: one row per bin and packed
rows give the masked padded layout's log-probs, entropies and parameter gradients (float64,
fused and full-logits heads, tied and untied); the check that refuses packing for a model whose
attention crosses rows."""

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


def _masked_padded(model, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: log-probs and entropies ``[N, R]`` from the masked padded layout
    (``[left-padded prompt | right-padded answer]`` with its attention mask and positions),
    the full logits and a plain log-softmax, written here independently of the package."""
    P, R = batch.prompt_len, batch.response_ids.shape[1]
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids, use_cache=False).logits  # fmt: skip
    logprobs = torch.log_softmax(logits[:, P - 1 : P + R - 1] / TEMPERATURE, dim=-1)
    logp = logprobs.gather(-1, batch.response_ids[..., None])[..., 0]
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logp, entropy


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_both_layouts_give_the_masked_padded_logprobs_and_gradients(tiny_policy, tied, fused):
    """One row per bin (every unpacked forward: no mask, plain causal attention) and packed
    rows (several per bin) against the masked padded layout, float64."""
    model = _load(tiny_policy, tied, torch.float64)
    batch = _batch(model.config.vocab_size, seed=3)
    pack = pack_rows(batch)
    assert pack.input_ids.shape[0] < len(batch) and pack.slots < batch.input_ids.numel()
    results = []
    for packed in (None, False, True):
        model.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unfused path says so
            if packed is None:
                logp, entropy = _masked_padded(model, batch)
            else:
                logp, entropy = answer_logprobs(model, batch, TEMPERATURE, chunk_size=16,
                                                fused=fused, entropy_grad=True, packed=packed)
        (_loss(logp, batch) + 0.1 * (entropy * batch.response_mask).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((logp.detach(), entropy.detach(), grads))
    (logp0, ent0, g0), *layouts = results
    mask = batch.response_mask
    assert float(g0.norm()) > 1e-3
    for logp1, ent1, g1 in layouts:
        torch.testing.assert_close(logp1[mask], logp0[mask], rtol=0, atol=1e-10)
        torch.testing.assert_close(ent1[mask], ent0[mask], rtol=0, atol=1e-10)
        assert float(logp1[~mask].abs().sum()) == 0.0  # padding is 0, nothing computed there
        assert float((g1 - g0).norm() / g0.norm()) < 1e-10


def test_one_row_per_bin_runs_the_decoder_without_a_mask(tiny_policy) -> None:
    """The unpacked forward hands the decoder no mask and positions 0..W-1 in every row, so
    transformers' SDPA path takes the kernel's own causal mode (``is_causal``)."""
    model = _load(tiny_policy, True, torch.float32)
    batch = _batch(model.config.vocab_size, seed=4)
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return original(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        answer_logprobs(model, batch, TEMPERATURE)
        n_plain = len(seen)
        answer_logprobs(model, batch, TEMPERATURE, packed=True)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    assert n_plain == model.config.num_hidden_layers
    assert all(mask is None and causal for mask, causal in seen[:n_plain])
    assert all(mask is not None for mask, _ in seen[n_plain:])  # packed: block-diagonal mask


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
