"""CISPO and SAPO as members of the loss family (``TraceConfig.surrogate``).

Contract: ``docs/ALGORITHMS.md`` ("Token objectives"). References: ``ref_cispo_terms`` and
``ref_sapo_terms`` of tests/helpers/loss_reference.py, loops written from the papers' formulas
(MiniMax-M1, arXiv 2506.13585, eq. 4; SAPO, arXiv 2511.20347). Gradients are w.r.t. the new
log-probs, float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.loss_reference import AGGS, make_batch, ref_grpo_loss, ref_trace_loss
from hypothesis import given, settings
from hypothesis import strategies as st

from strace_ds.config import TrainConfig
from strace_ds.losses import PRESETS, SURROGATES, TraceConfig, policy_loss, sapo_gate

F64 = torch.float64
ATOL = 1e-10


def run(b, config, **kw):
    out = policy_loss(b["logp"], b["old"], b["A"], b["mask"], entropy=b["entropy"],
                      config=config, **kw)  # fmt: skip
    (grad,) = torch.autograd.grad(out.loss, b["logp"])
    return out.loss, grad, out


def reference(b, config):
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config, entropy=b["entropy"])
    (grad,) = torch.autograd.grad(ref, b["logp"])
    return ref, grad


def assert_close(loss, grad, ref, ref_grad, atol=ATOL):
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=0, atol=atol)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=atol)


# Each surrogate with every trace composition it accepts.
CONFIGS = {
    "cispo": TraceConfig.preset("cispo"),
    "cispo_two_sided": TraceConfig.preset("cispo", clip_low=0.2, clip_high=0.28),
    "cispo_weight_form": TraceConfig.preset("cispo", lam=0.95, form="weight",
                                            entropy_top_quantile=0.2),
    "cispo_80_20": TraceConfig.preset("cispo", entropy_top_quantile=0.2,
                                      loss_on_selected_only=True),
    "sapo": TraceConfig.preset("sapo"),
    "sapo_steep": TraceConfig.preset("sapo", sapo_tau_pos=3.0, sapo_tau_neg=8.0),
    "sapo_trace": TraceConfig.preset("sapo", lam=0.5, entropy_top_quantile=0.2),
    "sapo_sequence": TraceConfig.preset("sapo", window="sequence", lam=1.0),
    "sapo_weight_form": TraceConfig.preset("sapo", lam=0.95, form="weight"),
}  # fmt: skip


# ------------------------------------------------------------------ against the loops


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_policy_loss_matches_the_loop_reference(name, agg, seed):
    # scale 0.4: many ratios outside [0.8, 1.28] and the gates far from 1; holes in the masks;
    # per-token advantages of both signs on odd seeds
    b = make_batch(4, 13, seed=100 + seed, scale=0.4, holes=True, adv_per_token=seed % 2 == 1)
    config = TraceConfig.preset("grpo", **{
        **CONFIGS[name].to_dict(), "loss_agg": agg,
    })  # fmt: skip
    loss, grad, _ = run(b, config)
    assert_close(loss, grad, *reference(b, config))


@st.composite
def surrogate_cases(draw):
    B, T = draw(st.integers(1, 4)), draw(st.integers(1, 30))
    surrogate = draw(st.sampled_from(["cispo", "sapo"]))
    weight_form = draw(st.booleans())
    fields = dict(
        surrogate=surrogate,
        lam=draw(st.floats(0.0, 1.0)) if weight_form or surrogate == "sapo" else 0.0,
        form="weight" if weight_form else "ratio",
        clip_low=draw(st.floats(0.0, 1.0 if surrogate == "cispo" else 0.9)),
        clip_high=draw(st.floats(0.0, 5.0)),
        sapo_tau_pos=draw(st.floats(0.05, 10.0)),
        sapo_tau_neg=draw(st.floats(0.05, 10.0)),
        entropy_top_quantile=draw(st.sampled_from([None, 0.2, 1.0])),
        loss_on_selected_only=draw(st.booleans()),
        loss_agg=draw(st.sampled_from(AGGS)),
    )
    return B, T, draw(st.integers(0, 2**31 - 1)), draw(st.booleans()), TraceConfig(**fields)


@settings(max_examples=40, deadline=None)
@given(surrogate_cases())
def test_property_surrogates_match_the_reference(case):
    B, T, seed, adv_per_token, config = case
    b = make_batch(B, T, seed, scale=0.5, holes=True, adv_per_token=adv_per_token)
    b["mask"][0, 0] = True  # a selection needs one valid token
    loss, grad, _ = run(b, config)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert_close(loss, grad, *reference(b, config))


# ------------------------------------------------------------------ identities with GRPO


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("adv_per_token", [False, True])
@pytest.mark.parametrize("config", [
    TraceConfig.preset("cispo"),
    TraceConfig.preset("cispo", clip_low=0.2, clip_high=0.28),
    TraceConfig.preset("sapo"),
    TraceConfig.preset("sapo", sapo_tau_pos=0.3, sapo_tau_neg=7.0),
], ids=["cispo", "cispo_two_sided", "sapo", "sapo_other_temperatures"])  # fmt: skip
def test_on_policy_gradient_is_grpos(config, agg, adv_per_token):
    # r = 1 on every token. CISPO: d/dlogp [-sg(clip(1)) A logp] = -A. SAPO:
    # d/dlogp [-4/tau sigmoid(tau (r - 1)) A] = -4 s (1 - s) r A = -A at r = 1 (s = 1/2), any
    # tau. GRPO: d/dlogp [-r A] = -A inside the trust region. Same aggregation, same gradient.
    b = make_batch(4, 11, seed=7, holes=True, adv_per_token=adv_per_token)
    b["logp"] = b["old"].clone().requires_grad_(True)
    config = TraceConfig.preset("grpo", **{**config.to_dict(), "loss_agg": agg})
    _, grad, out = run(b, config)
    grpo = ref_grpo_loss(b["logp"], b["old"], b["A"], b["mask"], 0.2, 0.2, agg)
    (want,) = torch.autograd.grad(grpo, b["logp"])
    torch.testing.assert_close(grad, want, rtol=0, atol=1e-15)
    assert out.metrics["policy/clip_frac_low"] == out.metrics["policy/clip_frac_high"] == 0.0


def test_cispo_keeps_the_gradient_of_tokens_outside_the_trust_region():
    # One answer, 4 tokens, token_mean over N = 4, clip 0.2 / 0.28 for both, A = +1 then -1.
    # Token ratios 1.5 (above 1.28), 0.5 (below 0.8), 1.1 (inside), 1.0.
    # GRPO (A > 0): the 1.5 token is clipped, gradient 0; the others -r A / N.
    # CISPO: every token -clip(r) A / N: -1.28/4, -0.8/4, -1.1/4, -1/4.
    # With A = -1: GRPO clips the 0.5 token (r < 0.8, A < 0); CISPO gives +0.8/4 there.
    r = torch.tensor([[1.5, 0.5, 1.1, 1.0]], dtype=F64)
    old = torch.full((1, 4), -2.0, dtype=F64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    cispo = TraceConfig.preset("cispo", clip_low=0.2, clip_high=0.28)
    grpo = TraceConfig.preset("grpo", clip_high=0.28)
    for a, grpo_want in ((1.0, [0.0, -0.5, -1.1, -1.0]), (-1.0, [1.5, 0.0, 1.1, 1.0])):
        grads = {}
        for name, config in (("cispo", cispo), ("grpo", grpo)):
            logp = (old + torch.log(r)).requires_grad_(True)
            out = policy_loss(logp, old, torch.tensor([a], dtype=F64), mask, config=config)
            (grads[name],) = torch.autograd.grad(out.loss, logp)
        cispo_want = torch.tensor([[-1.28 * a, -0.8 * a, -1.1 * a, -1.0 * a]], dtype=F64) / 4
        torch.testing.assert_close(grads["cispo"], cispo_want, rtol=0, atol=1e-15)
        torch.testing.assert_close(grads["grpo"], torch.tensor([grpo_want], dtype=F64) / 4,
                                   rtol=0, atol=1e-15)  # fmt: skip
        assert bool((grads["cispo"] != 0).all())


def test_sapo_gate_by_hand():
    # f(r) = 4/tau sigmoid(tau (r - 1)); one token, r = e^0.3, A = +1 (tau_pos = 1) or -2
    # (tau_neg = 1.05); loss -f(r) A, gradient w.r.t. logp: -4 s (1 - s) r A.
    r = math.exp(0.3)
    for a, tau in ((1.0, 1.0), (-2.0, 1.05)):
        s = 1.0 / (1.0 + math.exp(-tau * (r - 1.0)))
        old = torch.tensor([[-1.0]], dtype=F64)
        logp = (old + 0.3).requires_grad_(True)
        out = policy_loss(logp, old, torch.tensor([a], dtype=F64), torch.ones(1, 1, dtype=bool),
                          config=TraceConfig.preset("sapo"))  # fmt: skip
        (grad,) = torch.autograd.grad(out.loss, logp)
        assert out.loss.item() == pytest.approx(-4.0 / tau * s * a, rel=1e-14)
        assert grad.item() == pytest.approx(-4.0 * s * (1.0 - s) * r * a, rel=1e-14)
    gate = sapo_gate(torch.ones(2, dtype=F64), torch.tensor([1.0, -1.0], dtype=F64), 1.0, 1.05)
    torch.testing.assert_close(gate, torch.tensor([2.0, 2.0 / 1.05], dtype=F64))


def test_sapo_damps_far_off_policy_tokens_smoothly():
    # A > 0, one token per row, token_mean: the credit -d loss / d logp_i is 4 s (1 - s) r_i / N,
    # 1/N at r = 1, falling smoothly (never exactly 0 here) as r leaves 1, the faster the
    # larger tau; GRPO's clip cuts it to exactly 0 above 1 + clip_high.
    r = torch.tensor([1.0, 1.3, 2.0, 3.0, 5.0], dtype=F64)
    old = torch.full((5, 1), -1.0, dtype=F64)
    A, mask = torch.ones(5, dtype=F64), torch.ones(5, 1, dtype=torch.bool)

    def credit(config):
        logp = (old + torch.log(r)[:, None]).requires_grad_(True)
        out = policy_loss(logp, old, A, mask, config=config)
        return -torch.autograd.grad(out.loss, logp)[0][:, 0] * 5

    soft, steep = (credit(TraceConfig.preset("sapo", loss_agg="token_mean", sapo_tau_pos=t))
                   for t in (1.0, 4.0))  # fmt: skip
    assert soft[0] == steep[0] == 1.0
    assert bool((soft > 0).all()) and bool((steep > 0).all())
    assert bool((soft[2:].diff() < 0).all()) and bool((steep[1:] < soft[1:]).all())
    hard = credit(TraceConfig.preset("grpo"))
    assert torch.equal(hard[1:], torch.zeros(4, dtype=F64))


# ------------------------------------------------------------------ configuration


def test_presets_and_fields():
    assert SURROGATES == ("clip", "cispo", "sapo")
    c, s = PRESETS["cispo"], PRESETS["sapo"]
    assert (c.surrogate, c.clip_low, c.clip_high, c.loss_agg) == ("cispo", 1.0, 4.0, "token_mean")
    assert (s.surrogate, s.sapo_tau_pos, s.sapo_tau_neg, s.loss_agg) == (
        "sapo", 1.0, 1.05, "seq_mean_token_mean")
    for name in ("grpo", "gspo", "highent_grpo", "p_trace", "s_trace"):
        assert PRESETS[name].surrogate == "clip"


@pytest.mark.parametrize("overrides,match", [
    (dict(surrogate="cispo", lam=0.5), r"surrogate='cispo' needs each token's own ratio.*lam=0.5"),
    (dict(surrogate="cispo", window="sequence", lam=1.0), r"surrogate='cispo'.*window='sequence'"),
    (dict(surrogate="cispo", form="gate"), r"surrogate='cispo' does not compose with form='gate'"),
    (dict(surrogate="sapo", form="gate"), r"surrogate='sapo' does not compose with form='gate'"),
    (dict(surrogate="cispo", clip_low=1.5), r"clip_low must be <= 1 with surrogate='cispo'"),
    (dict(clip_low=1.0), r"clip_low must be < 1"),
    (dict(surrogate="sapo", sapo_tau_pos=0.0), r"sapo_tau_pos must be a finite float > 0"),
    (dict(sapo_tau_neg=math.inf), r"sapo_tau_neg must be a finite float > 0"),
    (dict(surrogate="ppo"), r"surrogate must be one of clip, cispo, sapo"),
])  # fmt: skip
def test_incompatible_combinations_are_refused_naming_the_fields(overrides, match):
    with pytest.raises(ValueError, match=match):
        TraceConfig.preset("grpo", **overrides)


def test_trainer_config_takes_the_presets_and_their_overrides():
    cfg = TrainConfig(loss="sapo", sapo_tau_neg=2.0)
    assert cfg.trace_config() == TraceConfig.preset("sapo", sapo_tau_neg=2.0)
    assert TrainConfig(loss="grpo", surrogate="cispo", clip_low=1.0).trace_config().surrogate == (
        "cispo")
    with pytest.raises(ValueError, match="surrogate must be one of clip, cispo, sapo"):
        TrainConfig(surrogate="soft")
    with pytest.raises(ValueError, match=r"surrogate='cispo' needs each token's own ratio"):
        TrainConfig(loss="cispo", lam=0.5)


def test_cispo_clip_fractions_count_the_clipped_weights_of_either_sign():
    # cispo clips the weight whatever the sign of A: r = 1.5 with A < 0 counts as clipped high,
    # r = 0.5 with A > 0 as clipped low (clip 0.2 / 0.28); PPO's clip counts neither.
    old = torch.full((2, 1), -1.0, dtype=F64)
    logp = old + torch.log(torch.tensor([[1.5], [0.5]], dtype=F64))
    A, mask = torch.tensor([-1.0, 1.0], dtype=F64), torch.ones(2, 1, dtype=torch.bool)
    cispo = TraceConfig.preset("cispo", clip_low=0.2, clip_high=0.28)
    m = policy_loss(logp, old, A, mask, config=cispo).metrics
    assert (m["policy/clip_frac_low"], m["policy/clip_frac_high"]) == (0.5, 0.5)
    m = policy_loss(logp, old, A, mask, config=TraceConfig.preset("grpo", clip_high=0.28)).metrics
    assert (m["policy/clip_frac_low"], m["policy/clip_frac_high"]) == (0.0, 0.0)
