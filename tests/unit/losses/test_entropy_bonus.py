"""The entropy bonus (``--entropy_coef``, ``policy_loss(..., entropy_coef=c)``): the loss minus
``c H_t`` on the loss tokens, aggregated like the policy term with the same normaliser.

References: ``ref_entropy_bonus`` and ``ref_trace_loss`` of tests/helpers/loss_reference.py (loops);
float64, gradients w.r.t. the new log-probs and the entropies, and through
``token_logprobs_and_entropy`` down to the logits.
"""

from __future__ import annotations

import pytest
import torch
from helpers.loss_reference import AGGS, make_batch, ref_entropy_bonus, ref_select, ref_trace_loss

from strace_ds.losses import ENTROPY_METRIC_NAMES, PRESETS, TraceConfig, policy_loss
from strace_ds.model.logprob_kernels import token_logprobs_and_entropy

F64 = torch.float64


def _leaf(b):
    return b["entropy"].clone().requires_grad_(True)


@pytest.mark.parametrize("name", ["grpo", "cispo", "sapo", "s_trace", "highent_grpo", "gspo"])
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("seed", [1, 2])
def test_bonus_gradient_matches_the_loop_reference(name, agg, seed):
    b = make_batch(4, 12, seed=200 + seed, scale=0.3, holes=True)
    config = TraceConfig.preset(name, loss_agg=agg)
    H = _leaf(b)
    normalizer = 17.0 if seed == 2 else None  # a trainer's global normaliser
    out = policy_loss(b["logp"], b["old"], b["A"], b["mask"], entropy=H, config=config,
                      normalizer=normalizer, max_len=20, entropy_coef=0.03)  # fmt: skip
    g_logp, g_H = torch.autograd.grad(out.loss, (b["logp"], H))
    H_ref = _leaf(b)
    m, _ = ref_select(b["mask"], b["entropy"], config.entropy_top_quantile)
    M = m if config.loss_on_selected_only else b["mask"]
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config, entropy=b["entropy"],
                         max_len=20, normalizer=normalizer)
    ref = ref + ref_entropy_bonus(H_ref, M, 0.03, agg, max_len=20, normalizer=normalizer)
    r_logp, r_H = torch.autograd.grad(ref, (b["logp"], H_ref))
    torch.testing.assert_close(out.loss.detach(), ref.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(g_logp, r_logp, rtol=0, atol=1e-10)
    torch.testing.assert_close(g_H, r_H, rtol=0, atol=1e-10)
    assert bool((g_H[~M] == 0).all())  # padding and tokens outside the loss get nothing


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_zero_coefficient_is_bit_identical(name):
    b = make_batch(3, 10, seed=5, holes=True)
    config = PRESETS[name]
    base = policy_loss(b["logp"], b["old"], b["A"], b["mask"], entropy=b["entropy"],
                       config=config)  # fmt: skip
    zero = policy_loss(b["logp"], b["old"], b["A"], b["mask"], entropy=_leaf(b),
                       config=config, entropy_coef=0.0)  # fmt: skip
    g0 = torch.autograd.grad(base.loss, b["logp"])[0]
    g1 = torch.autograd.grad(zero.loss, b["logp"])[0]
    assert torch.equal(base.loss, zero.loss) and torch.equal(g0, g1)
    assert torch.equal(base.token_loss, zero.token_loss)
    assert base.metrics.keys() == zero.metrics.keys()
    assert not set(ENTROPY_METRIC_NAMES) & set(base.metrics)


def test_bonus_metric_and_value_by_hand():
    # One row, 3 tokens, the last padding. On-policy GRPO with A = 0: the loss is the bonus
    # alone, -c (H_0 + H_1) / 2 (token_mean); the metric is c times the mean H over M.
    logp = torch.zeros(1, 3, dtype=F64, requires_grad=True)
    H = torch.tensor([[0.5, 1.5, 99.0]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    out = policy_loss(logp, logp.detach(), torch.zeros(1, dtype=F64), mask, entropy=H,
                      config=PRESETS["grpo"], entropy_coef=0.1)  # fmt: skip
    assert out.loss.item() == pytest.approx(-0.1, rel=1e-15)
    assert out.metrics["policy/entropy_bonus"] == pytest.approx(0.1, rel=1e-15)
    (g,) = torch.autograd.grad(out.loss, H)
    torch.testing.assert_close(g, torch.tensor([[-0.05, -0.05, 0.0]], dtype=F64))


def test_bonus_gradient_reaches_the_logits_through_the_chunked_entropy():
    # H from token_stats' chunked function (its hand-written backward) against plain autograd
    # of -sum p log p, float64.
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 11, generator=g, dtype=F64)
    tokens = torch.randint(0, 11, (2, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    A = torch.tensor([0.7, -1.2], dtype=F64)
    config = PRESETS["cispo"]

    def loss_of(logp, H, old):
        return policy_loss(logp, old, A, mask, entropy=H, config=config, entropy_coef=0.2).loss

    x1 = logits.clone().requires_grad_(True)
    logp1, H1 = token_logprobs_and_entropy(x1, tokens, chunk_size=3)
    old = logp1.detach() + 0.1 * torch.randn(2, 5, generator=g, dtype=F64)
    (g1,) = torch.autograd.grad(loss_of(logp1, H1, old), x1)
    x2 = logits.clone().requires_grad_(True)
    lsm = torch.log_softmax(x2, -1)
    H2 = -(lsm.exp() * lsm).sum(-1)
    (g2,) = torch.autograd.grad(loss_of(lsm.gather(-1, tokens[..., None])[..., 0], H2, old), x2)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-10)
    assert float(g1.abs().sum()) > 0


def test_the_coefficient_is_checked():
    b = make_batch(2, 4, seed=9)
    with pytest.raises(ValueError, match="entropy_coef != 0 needs entropy"):
        policy_loss(b["logp"], b["old"], b["A"], b["mask"], config=PRESETS["grpo"],
                    entropy_coef=0.1)  # fmt: skip
    for bad in (-0.1, float("inf"), True):
        with pytest.raises(ValueError, match="entropy_coef must be a finite number >= 0"):
            policy_loss(b["logp"], b["old"], b["A"], b["mask"], entropy=b["entropy"],
                        config=PRESETS["grpo"], entropy_coef=bad)  # fmt: skip
