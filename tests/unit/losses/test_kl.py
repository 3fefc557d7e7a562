"""KL to a reference policy: `kl_penalty`, `sequence_kl_penalty` and `policy_loss`'s KL term.

Contract: `docs/ALGORITHMS.md` ("KL to a reference"). References: `ref_kl` and
`ref_trace_loss(ref=..., beta=...)` in tests/helpers/loss_reference.py, loops written from
Schulman's estimators. float64, tolerances 1e-12 unless noted.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.loss_checks import F64, METRICS, assert_same, cfg, grad_of, run
from helpers.loss_reference import AGGS, make_batch, ref_behaviour_weights, ref_kl, ref_trace_loss

import strace_ds.losses as losses
from strace_ds.losses import (
    KL_ESTIMATORS,
    KL_METRIC_NAMES,
    TraceConfig,
    behaviour_weights,
    kl_penalty,
    policy_loss,
    sequence_kl_penalty,
    token_credit,
)


def kl_batch(B, T, seed, holes=True, scale=0.3):
    """make_batch plus reference log-probs `ref` (garbage at padding)."""
    b = make_batch(B, T, seed=seed, holes=holes)
    g = torch.Generator().manual_seed(seed + 2000)
    ref = b["logp"].detach() + scale * torch.randn(B, T, generator=g, dtype=F64)
    b["ref"] = torch.where(b["mask"], ref, torch.full_like(ref, 1e4))
    return b


# --------------------------------------------------------------------------- estimators


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_estimators_match_the_loop_and_their_gradients(estimator):
    b = kl_batch(3, 7, seed=1, holes=False)
    kl = kl_penalty(b["logp"], b["ref"], estimator)
    ref = ref_kl(b["logp"], b["ref"], estimator)
    torch.testing.assert_close(kl, ref, rtol=0, atol=1e-14)
    g = torch.randn(3, 7, generator=torch.Generator().manual_seed(5), dtype=F64)
    (grad,) = torch.autograd.grad((kl * g).sum(), b["logp"])
    (ref_grad,) = torch.autograd.grad((ref * g).sum(), b["logp"])
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-14)
    # by hand: d k1 / d logp = 1, d k2 / d logp = logp - ref, d k3 / d logp = 1 - e**(ref-logp)
    x = b["logp"].detach() - b["ref"]
    by_hand = {"k1": torch.ones_like(x), "k2": x, "k3": 1.0 - torch.exp(-x)}[estimator]
    torch.testing.assert_close(grad, g * by_hand, rtol=0, atol=1e-14)


def test_estimators_by_hand():
    # logp = ln 0.5, ref = ln 0.25: x = ref - logp = -ln 2.
    # k1 = ln 2; k2 = (ln 2)**2 / 2; k3 = 0.5 - 1 + ln 2.
    logp = torch.tensor([[math.log(0.5)]], dtype=F64)
    ref = torch.tensor([[math.log(0.25)]], dtype=F64)
    ln2 = math.log(2)
    for estimator, expected in (("k1", ln2), ("k2", ln2**2 / 2), ("k3", ln2 - 0.5)):
        assert kl_penalty(logp, ref, estimator).item() == pytest.approx(expected, abs=1e-15)


def test_k3_is_the_one_approx_kl_k3():
    # One k3: policy/approx_kl (KL(old || new) from delta) and the reference KL share it.
    assert losses.objective.approx_kl_k3 is losses.kl.approx_kl_k3 is losses.approx_kl_k3
    b = kl_batch(2, 5, seed=2)
    torch.testing.assert_close(kl_penalty(b["logp"], b["ref"], "k3"),
                               losses.approx_kl_k3(b["ref"] - b["logp"]), rtol=0, atol=0)


def test_estimator_errors_list_the_valid_names():
    b = kl_batch(2, 4, seed=3)
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(b["logp"], b["ref"], "k4")
    with pytest.raises(ValueError, match="logp_ref"):
        kl_penalty(b["logp"], b["ref"][:, :3], "k1")


# --------------------------------------------------------------------------- in the reward


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_reward_penalty_is_the_masked_sequence_sum(estimator):
    b = kl_batch(4, 9, seed=4)
    kl = kl_penalty(b["logp"], b["ref"], estimator)  # garbage (and huge) at padding
    penalty, metrics = sequence_kl_penalty(kl, b["mask"], beta=0.05)
    per_token = ref_kl(b["logp"].detach(), b["ref"], estimator)
    expected, total, n = [], 0.0, 0
    for i in range(4):
        s = sum(float(per_token[i, t]) for t in range(9) if bool(b["mask"][i, t]))
        expected.append(0.05 * s)
        total += s
        n += int(b["mask"][i].sum())
    torch.testing.assert_close(penalty, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-14)
    assert metrics == pytest.approx({"policy/kl_ref": total / n}, abs=1e-14)
    assert set(metrics) == set(KL_METRIC_NAMES)
    assert not penalty.requires_grad


def test_reward_penalty_empty_rows_and_batch():
    kl = torch.ones(2, 3, dtype=F64)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    penalty, metrics = sequence_kl_penalty(kl, mask, beta=0.5)
    assert penalty.tolist() == [1.0, 0.0] and metrics["policy/kl_ref"] == 1.0
    _, metrics = sequence_kl_penalty(kl, torch.zeros(2, 3, dtype=torch.bool), beta=0.5)
    assert math.isnan(metrics["policy/kl_ref"])


# --------------------------------------------------------------------------- in the loss


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("name", ["grpo", "p_trace", "highent_grpo"])
def test_loss_term_matches_the_autograd_loop(estimator, agg, name):
    # L_t + beta kl_t with gradient, aggregated like the policy term (same denominator).
    b = kl_batch(4, 10, seed=5)
    config = TraceConfig.preset(name, loss_agg=agg)
    entropy = b["entropy"] if config.uses_entropy else None
    loss, grad, out = run(b, config, ref_logprobs=b["ref"], kl_coef=0.1, kl_estimator=estimator)
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config, entropy=entropy,
                         ref=b["ref"], beta=0.1, estimator=estimator)
    assert_same(loss, grad, ref, grad_of(ref, b))
    # policy/kl_ref: mean kl over the loss tokens M
    M = out.loss_mask
    kl = ref_kl(b["logp"].detach(), b["ref"], estimator)
    assert out.metrics["policy/kl_ref"] == pytest.approx(float(kl[M].mean()), abs=1e-14)


def test_k3_loss_gradient_by_hand():
    # Zero advantages: the only gradient is beta * (1 - e**(ref - logp)) / N per valid token.
    b = kl_batch(3, 8, seed=6)
    A = torch.zeros(3, dtype=F64)
    _, grad, _ = run(b, cfg(), A=A, ref_logprobs=b["ref"], kl_coef=0.2, kl_estimator="k3")
    M = b["mask"]
    x = b["ref"] - b["logp"].detach()
    expected = torch.where(M, 0.2 * (1.0 - torch.exp(x)) / int(M.sum()), 0.0)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["grpo", "gspo", "s_trace"])
def test_beta_zero_is_bit_identical(name):
    b = kl_batch(3, 9, seed=7)
    config = TraceConfig.preset(name)
    loss0, grad0, out0 = run(b, config)
    loss1, grad1, out1 = run(b, config, ref_logprobs=b["ref"], kl_coef=0.0)
    assert torch.equal(loss0, loss1) and torch.equal(grad0, grad1)
    assert torch.equal(out0.token_loss, out1.token_loss)
    assert "policy/kl_ref" not in out0.metrics and math.isfinite(out1.metrics["policy/kl_ref"])
    assert {k: out0.metrics[k] for k in METRICS} == pytest.approx(
        {k: out1.metrics[k] for k in METRICS}, nan_ok=True, abs=0
    )


def test_kl_with_behaviour_weight_weights_only_the_policy_term():
    b = kl_batch(3, 9, seed=8)
    config = TraceConfig.preset("p_trace")
    behav = b["old"] - 0.3 * torch.randn(3, 9, generator=torch.Generator().manual_seed(1),
                                         dtype=F64)
    w, _ = behaviour_weights(b["old"], behav, b["mask"], "token", 2.0, "truncate")
    loss, grad, _ = run(b, config, behaviour_weight=w, ref_logprobs=b["ref"], kl_coef=0.1,
                        kl_estimator="k2")
    ref_w = ref_behaviour_weights(b["old"], behav, b["mask"], "token", 2.0, "truncate")
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config, weight=ref_w,
                         ref=b["ref"], beta=0.1, estimator="k2")
    assert_same(loss, grad, ref, grad_of(ref, b))
    credit = token_credit(b["logp"], b["old"], b["A"], b["mask"], config=config,
                          behaviour_weight=w, ref_logprobs=b["ref"], kl_coef=0.1,
                          kl_estimator="k2")
    torch.testing.assert_close(credit, -grad, rtol=0, atol=0)


def test_padding_garbage_in_the_reference_stays_out():
    # ref = +-inf at padding (and logp huge there): finite loss and gradient, same as clean.
    b = kl_batch(3, 9, seed=9)
    pad = ~b["mask"]
    loss1, grad1, _ = run(b, cfg(lam=0.9), ref_logprobs=b["ref"], kl_coef=0.1)
    b2 = dict(b, ref=torch.where(pad, torch.full_like(b["ref"], -math.inf), b["ref"]))
    b2["logp"] = torch.where(pad, b["logp"] + 900.0, b["logp"]).detach().requires_grad_(True)
    loss2, grad2, _ = run(b2, cfg(lam=0.9), ref_logprobs=b2["ref"], kl_coef=0.1)
    assert torch.isfinite(loss2) and torch.isfinite(grad2).all()
    assert_same(loss1, grad1, loss2, grad2, atol=1e-14)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(kl_coef=0.1), "needs ref_logprobs"),
        (dict(kl_coef=-0.1, ref_logprobs="ref"), "kl_coef"),
        (dict(kl_coef=math.inf, ref_logprobs="ref"), "kl_coef"),
        (dict(kl_coef=0.1, ref_logprobs="ref", kl_estimator="kl"), "k1, k2, k3"),
        (dict(ref_logprobs="short"), "ref_logprobs"),
    ],
)
def test_loss_side_errors(kw, match):
    b = kl_batch(2, 6, seed=10)
    kw = dict(kw)
    if kw.get("ref_logprobs") == "ref":
        kw["ref_logprobs"] = b["ref"]
    elif kw.get("ref_logprobs") == "short":
        kw["ref_logprobs"] = b["ref"][:, :5]
    with pytest.raises(ValueError, match=match):
        policy_loss(b["logp"], b["old"], b["A"], b["mask"], config=cfg(), **kw)
