"""The trace forms (``TraceConfig.form``): ratio, token gate and weight, against the loops of
``tests/helpers/loss_reference.py`` and the identities of ``docs/ALGORITHMS.md`` ("Trace forms")."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers.loss_reference import (
    AGGS,
    make_batch,
    ref_grpo_loss,
    ref_past_log_weight,
    ref_past_log_weight_long,
    ref_select,
    ref_trace_loss,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from strace_ds.losses import FORMS, TraceConfig, past_log_weight, policy_loss, token_credit

F64 = torch.float64


def cfg(**overrides) -> TraceConfig:
    fields = dict(lam=0.0, window="causal", clip_low=0.2, clip_high=0.28,
                  entropy_top_quantile=None, loss_on_selected_only=False, loss_agg="token_mean")
    fields.update(overrides)
    return TraceConfig(**fields)


def loss_and_grad(b, config, old=None):
    out = policy_loss(b["logp"], b["old"] if old is None else old, b["A"], b["mask"],
                      entropy=b["entropy"], config=config)
    (grad,) = torch.autograd.grad(out.loss, b["logp"])
    return out.loss, grad, out


def ref_loss_and_grad(b, config):
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config, entropy=b["entropy"])
    if not ref.requires_grad:  # every term gated shut: the loop built a constant
        return ref, torch.zeros_like(b["logp"])
    (grad,) = torch.autograd.grad(ref, b["logp"])
    return ref, grad


# ------------------------------------------------------------------------------ identities


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("adv_per_token", [False, True])
def test_lam0_is_grpo_in_every_form(form, agg, adv_per_token):
    b = make_batch(4, 13, seed=31, holes=True, adv_per_token=adv_per_token)
    loss, grad, _ = loss_and_grad(b, cfg(form=form, loss_agg=agg))
    ref = ref_grpo_loss(b["logp"], b["old"], b["A"], b["mask"], 0.2, 0.28, agg)
    (ref_grad,) = torch.autograd.grad(ref, b["logp"])
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("adv_per_token", [False, True])
def test_gate_at_lam0_is_grpo_bit_for_bit(adv_per_token):
    # the token gate closes exactly where GRPO's clipped branch has no gradient: same numbers
    b = make_batch(6, 40, seed=32, scale=0.5, holes=True, adv_per_token=adv_per_token)
    loss_g, grad_g, out = loss_and_grad(b, TraceConfig.preset("grpo", form="gate"))
    loss_r, grad_r, _ = loss_and_grad(b, TraceConfig.preset("grpo"))
    assert out.metrics["trace/gated_frac"] > 0.1  # the gate did close somewhere
    assert torch.equal(loss_g, loss_r) and torch.equal(grad_g, grad_r)


@pytest.mark.parametrize("preset,grpo", [("p_trace", "grpo"), ("s_trace", "grpo"),
                                         ("s_trace", "highent_grpo")])
@pytest.mark.parametrize("clock", ["selected", "position"])
@pytest.mark.parametrize("lam", [0.5, 0.95, 1.0])
def test_weight_form_on_policy_is_grpo(preset, grpo, clock, lam):
    # first update: old = logp, every weight is exactly 1 and each token keeps its own ratio
    b = make_batch(4, 30, seed=33, holes=True)
    overrides = {"loss_on_selected_only": True} if grpo == "highent_grpo" else {}
    weight = TraceConfig.preset(preset, form="weight", lam=lam, weight_clock=clock,
                                clip_high=0.2, **overrides)
    old = b["logp"].detach()
    loss_w, grad_w, out = loss_and_grad(b, weight, old=old)
    loss_g, grad_g, _ = loss_and_grad(b, TraceConfig.preset(grpo), old=old)
    assert out.metrics["trace/weight_mean"] == 1.0 and out.metrics["trace/weight_max"] == 1.0
    torch.testing.assert_close(loss_w, loss_g, rtol=0, atol=1e-15)
    torch.testing.assert_close(grad_w, grad_g, rtol=0, atol=1e-15)


@pytest.mark.parametrize("lam", [0.5, 0.95, 1.0])
@pytest.mark.parametrize("name", ["p_trace", "s_trace"])
def test_gate_never_pushes_a_token_past_its_own_bound(name, lam):
    # A token outside its trust region in its advantage's direction gets exactly no gradient
    # from any term of the trace; the ratio form keeps pushing some of those tokens out.
    b = make_batch(6, 40, seed=34, scale=0.6)
    config = TraceConfig.preset(name, lam=lam, form="ratio")
    rho = torch.exp(b["logp"].detach() - b["old"])
    A = b["A"][:, None].expand_as(rho)
    out_high = (A > 0) & (rho > 1 + config.clip_high) & b["mask"]
    out_low = (A < 0) & (rho < 1 - config.clip_low) & b["mask"]
    outside = out_high | out_low
    assert outside.sum() > 20
    credit_gate = token_credit(b["logp"], b["old"], b["A"], b["mask"], b["entropy"],
                               dataclasses.replace(config, form="gate"))
    assert torch.all(credit_gate[outside] == 0.0)
    credit_ratio = token_credit(b["logp"], b["old"], b["A"], b["mask"], b["entropy"], config)
    # ratio form: some token above 1 + clip_high is pushed further up (or below 1 - clip_low down)
    pushed_out = ((credit_ratio > 0) & out_high) | ((credit_ratio < 0) & out_low)
    assert pushed_out.any()


def test_weight_form_full_product_is_the_historical_weight():
    # lam = 1, every token selected, position clock, no bounds: W_t = prod_{k<t} rho_k exactly
    b = make_batch(3, 9, seed=35)
    delta = torch.where(b["mask"], b["logp"].detach() - b["old"], torch.zeros(3, 9, dtype=F64))
    log_w = past_log_weight(delta, b["mask"], 1.0, b["mask"])
    for i in range(3):
        for t in range(9):
            if b["mask"][i, t]:
                expected = math.prod(math.exp(float(delta[i, k])) for k in range(t))
                assert math.exp(float(log_w[i, t])) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------ references


@pytest.mark.parametrize("form", ["gate", "weight"])
@pytest.mark.parametrize("name", ["p_trace", "s_trace", "highent_grpo"])
@pytest.mark.parametrize("clock", ["selected", "position"])
def test_forms_match_the_loop_reference(form, name, clock):
    b = make_batch(4, 16, seed=36, scale=0.4, holes=True)
    lam = 0.9 if name == "highent_grpo" else TraceConfig.preset(name).lam
    config = TraceConfig.preset(name, form=form, weight_clock=clock, weight_min=0.5,
                                weight_max=1.5, lam=lam)
    loss, grad, _ = loss_and_grad(b, config)
    ref, ref_grad = ref_loss_and_grad(b, config)
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.95, 1.0])
@pytest.mark.parametrize("clock", ["selected", "position"])
def test_past_log_weight_matches_the_loop(lam, clock):
    b = make_batch(3, 25, seed=37, holes=True)
    m, _ = ref_select(b["mask"], b["entropy"], 0.3)
    delta = torch.where(b["mask"], b["logp"].detach() - b["old"], torch.zeros(3, 25, dtype=F64))
    ticks = m if clock == "selected" else b["mask"]
    got = past_log_weight(delta, m, lam, ticks)
    torch.testing.assert_close(got, ref_past_log_weight(delta, m, lam, ticks), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_past_log_weight_long_sequence_matches_the_loop(dtype, atol):
    # the chunked scan at T = 32,768: dense and sparse selections, several lam
    g = torch.Generator().manual_seed(38)
    B, T = 2, 32_768
    delta = 0.05 * torch.randn(B, T, generator=g, dtype=F64)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 30_000:] = False
    m = valid.clone()
    m[1] &= torch.rand(T, generator=g) < 0.2
    delta = torch.where(valid, delta, torch.zeros_like(delta))
    lams = [0.5, 0.9, 0.99, 1.0]
    for clock in (m, valid):
        ref = ref_past_log_weight_long(delta, m, lams, clock)
        for j, lam in enumerate(lams):
            got = past_log_weight(delta.to(dtype), m, lam, clock).double()
            scale = 1.0 if lam < 1 else float(ref[j].abs().max())  # lam = 1: a sum of 32k terms
            torch.testing.assert_close(got, ref[j], rtol=0, atol=atol * scale)


@st.composite
def form_cases(draw):
    B, T = draw(st.integers(1, 4)), draw(st.integers(1, 30))
    form = draw(st.sampled_from(["gate", "weight"]))
    config = cfg(
        form=form,
        lam=draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))),
        window="causal" if form == "weight" else draw(st.sampled_from(["causal", "sequence"])),
        clip_low=draw(st.floats(1e-3, 0.5)),
        clip_high=draw(st.floats(1e-3, 0.5)),
        entropy_top_quantile=draw(st.sampled_from([None, 0.2, 0.7])),
        loss_on_selected_only=draw(st.booleans()),
        loss_agg=draw(st.sampled_from(AGGS)),
        weight_clock=draw(st.sampled_from(["selected", "position"])),
        weight_min=draw(st.sampled_from([0.0, 0.5, 1.0])),
        weight_max=draw(st.sampled_from([1.0, 2.0, math.inf])),
    )
    return B, T, draw(st.integers(0, 2**31 - 1)), draw(st.booleans()), config


@settings(max_examples=40, deadline=None)
@given(form_cases())
def test_property_forms_match_the_reference(case):
    B, T, seed, adv_per_token, config = case
    b = make_batch(B, T, seed, holes=True, adv_per_token=adv_per_token)
    b["mask"][0, 0] = True
    loss, grad, _ = loss_and_grad(b, config)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    ref, ref_grad = ref_loss_and_grad(b, config)
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["p_trace", "s_trace"])
def test_extreme_deltas_stay_finite_in_every_form(name, form):
    b = make_batch(3, 12, seed=27)
    sign = torch.where(torch.rand(3, 12, generator=torch.Generator().manual_seed(0)) < 0.5, 1, -1)
    b["logp"] = (b["old"] + 50.0 * sign).detach().requires_grad_(True)
    loss, grad, out = loss_and_grad(b, TraceConfig.preset(name, form=form))
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    own = {"ratio": (), "gate": ("trace/gated_frac",),
           "weight": ("trace/weight_mean", "trace/weight_max", "trace/weight_clipped_frac")}
    for k in own[form]:
        assert math.isfinite(out.metrics[k]), k
    if form == "weight":  # W = exp(clamp(log W)) <= exp(20), then bounded by weight_max
        assert out.metrics["trace/weight_max"] <= math.exp(20.0) * (1 + 1e-12)
        assert out.metrics["trace/weight_mean"] <= 2.0


# ------------------------------------------------------------------------------ metrics


def test_gate_and_weight_metrics_by_hand():
    # one row, three tokens, A = +1: ratios 1.5 (outside 1 + 0.28), 1.0, 0.5 (inside, A > 0)
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5]], dtype=F64))
    old = torch.zeros(1, 3, dtype=F64)
    A, mask = torch.ones(1, dtype=F64), torch.ones(1, 3, dtype=torch.bool)
    gate = policy_loss(logp, old, A, mask, config=cfg(form="gate", lam=0.5)).metrics
    assert gate["trace/gated_frac"] == pytest.approx(1 / 3, abs=1e-15)
    assert math.isnan(gate["trace/weight_mean"]) and math.isnan(gate["trace/weight_max"])
    # weight, lam = 1, all selected: W = (1, 1.5, 1.5), bounds [0, 1.2] -> w = (1, 1.2, 1.2)
    weight = policy_loss(logp, old, A, mask,
                         config=cfg(form="weight", lam=1.0, weight_max=1.2)).metrics
    assert math.isnan(weight["trace/gated_frac"])
    assert weight["trace/weight_mean"] == pytest.approx(3.4 / 3, abs=1e-14)
    assert weight["trace/weight_max"] == pytest.approx(1.5, abs=1e-14)
    assert weight["trace/weight_clipped_frac"] == pytest.approx(2 / 3, abs=1e-15)
    ratio = policy_loss(logp, old, A, mask, config=cfg(lam=0.5)).metrics
    assert all(math.isnan(ratio[k]) for k in ("trace/gated_frac", "trace/weight_mean",
                                               "trace/weight_max", "trace/weight_clipped_frac"))


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("field,value", [("form", "product"), ("weight_clock", "tokens"),
                                         ("weight_min", -0.1), ("weight_min", 1.5),
                                         ("weight_max", 0.9), ("weight_max", float("nan"))])
def test_form_fields_are_validated_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        TraceConfig.preset("p_trace", **{field: value})


def test_weight_form_refuses_the_sequence_window():
    with pytest.raises(ValueError, match="window='causal'"):
        TraceConfig.preset("gspo", form="weight")
