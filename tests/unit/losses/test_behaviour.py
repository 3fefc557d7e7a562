"""The behaviour correction (`behaviour_weights`) and its use in `policy_loss`.

Contract: `docs/ALGORITHMS.md` ("Three policies and the behaviour correction"). References:
`ref_behaviour_weights` and `ref_trace_loss(weight=...)` in tests/helpers/loss_reference.py, loops
written from the formulas. float64, tolerances 1e-12 unless noted.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.loss_checks import ATOL, F64, assert_same, cfg, grad_of, run
from helpers.loss_reference import make_batch, ref_behaviour_weights, ref_select, ref_trace_loss

from strace_ds.losses import (
    BEHAVIOUR_CAP,
    BEHAVIOUR_CORRECTIONS,
    BEHAVIOUR_METRIC_NAMES,
    BEHAVIOUR_MODES,
    PRESETS,
    TraceConfig,
    behaviour_weights,
    policy_loss,
    token_credit,
)

CORRECTIONS = ("token", "sequence", "trace")


def behav_batch(B, T, seed, holes=True, scale=0.3):
    """make_batch plus behaviour log-probs `behav` (garbage at padding) and a selection."""
    b = make_batch(B, T, seed=seed, holes=holes)
    g = torch.Generator().manual_seed(seed + 1000)
    behav = b["old"] - scale * torch.randn(B, T, generator=g, dtype=F64)  # d = old - behav
    b["behav"] = torch.where(b["mask"], behav, torch.full_like(behav, -1e4))
    b["sel"] = b["mask"] & (torch.rand(B, T, generator=g) < 0.4)
    return b


def weights(b, correction, cap=math.inf, mode="truncate", lam=0.0, selected=None, **kw):
    return behaviour_weights(b["old"], b["behav"], b["mask"], correction, cap, mode,
                             lam=lam, selected=selected, **kw)


# --------------------------------------------------------------------------- identities


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_none_is_todays_loss_bit_for_bit(name):
    b = behav_batch(3, 11, seed=1)
    config = TraceConfig.preset(name)
    w, metrics = weights(b, "none", cap=BEHAVIOUR_CAP, mode="mask")
    assert torch.equal(w, torch.ones_like(w))
    assert metrics["behaviour/clipped_frac"] == 0.0 and metrics["behaviour/weight_max"] == 1.0
    loss0, grad0, out0 = run(b, config)
    loss1, grad1, out1 = run(b, config, behaviour_weight=w)
    assert torch.equal(loss0, loss1) and torch.equal(grad0, grad1)
    assert torch.equal(out0.token_loss, out1.token_loss)
    assert out0.metrics.keys() == out1.metrics.keys()


@pytest.mark.parametrize("name", ["grpo", "p_trace", "s_trace", "gspo", "highent_grpo"])
def test_token_without_cap_is_per_token_importance_sampling(name):
    # w_t = exp(old_t - behav_t): each clipped term times pi_p / pi_b of its own token.
    b = behav_batch(4, 13, seed=2)
    config = TraceConfig.preset(name)
    w, _ = weights(b, "token")
    is_weight = torch.exp(b["old"] - b["behav"])  # plain per-token importance ratio
    torch.testing.assert_close(w[b["mask"]], is_weight[b["mask"]], rtol=0, atol=1e-15)
    loss, grad, _ = run(b, config, behaviour_weight=w)
    entropy = b["entropy"] if config.uses_entropy else None
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config, entropy=entropy,
                         weight=torch.where(b["mask"], is_weight, 1.0))
    assert_same(loss, grad, ref, grad_of(ref, b))


@pytest.mark.parametrize("cap", [math.inf, 1.2])
@pytest.mark.parametrize("mode", BEHAVIOUR_MODES)
def test_trace_with_lam0_and_no_selection_is_token(cap, mode):
    b = behav_batch(3, 12, seed=3)
    w_trace, m_trace = weights(b, "trace", cap, mode, lam=0.0)
    w_token, m_token = weights(b, "token", cap, mode)
    torch.testing.assert_close(w_trace, w_token, rtol=0, atol=0)
    assert m_trace == m_token


def test_trace_with_sequence_window_and_no_selection_is_sequence():
    b = behav_batch(3, 12, seed=4)
    w_trace, _ = weights(b, "trace", 1.5, "mask", lam=1.0, window="sequence")
    w_seq, _ = weights(b, "sequence", 1.5, "mask")
    torch.testing.assert_close(w_trace, w_seq, rtol=0, atol=1e-15)


@pytest.mark.parametrize("correction", CORRECTIONS)
@pytest.mark.parametrize("mode", BEHAVIOUR_MODES)
@pytest.mark.parametrize("cap", [math.inf, 2.0, 1.1])
@pytest.mark.parametrize("lam, use_sel", [(0.0, False), (0.6, False), (0.9, True), (1.0, True)])
def test_weights_match_the_loop_reference(correction, mode, cap, lam, use_sel):
    b = behav_batch(4, 14, seed=5, scale=0.4)
    sel = b["sel"] if use_sel else None
    w, _ = weights(b, correction, cap, mode, lam=lam, selected=sel)
    ref = ref_behaviour_weights(b["old"], b["behav"], b["mask"], correction, cap, mode,
                                lam=lam, m=sel if correction == "trace" else None)
    torch.testing.assert_close(w, ref, rtol=0, atol=1e-12)
    assert not w.requires_grad


@pytest.mark.parametrize("correction", CORRECTIONS)
@pytest.mark.parametrize("mode", BEHAVIOUR_MODES)
@pytest.mark.parametrize("name", ["grpo", "p_trace", "s_trace", "gspo"])
def test_loss_and_gradient_match_the_autograd_loop(correction, mode, name):
    # Loss and d loss / d logp (current policy) with the weights of the loop reference; the
    # trace correction takes the run's lam, window and selection (the loss's own m).
    b = behav_batch(4, 12, seed=6, scale=0.35)
    config = TraceConfig.preset(name)
    entropy = b["entropy"] if config.uses_entropy else None
    m, _ = ref_select(b["mask"], b["entropy"], config.entropy_top_quantile)
    sel = m if config.uses_entropy else None
    w, _ = weights(b, correction, 1.3, mode, lam=config.lam, window=config.window, selected=sel)
    loss, grad, _ = run(b, config, behaviour_weight=w)
    # GSPO's window is the sequence: its trace correction is the sequence one.
    gspo_trace = correction == "trace" and config.window == "sequence"
    ref_correction = "sequence" if gspo_trace else correction
    ref_w = ref_behaviour_weights(b["old"], b["behav"], b["mask"], ref_correction, 1.3, mode,
                                  lam=config.lam, m=sel)
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config, entropy=entropy,
                         weight=ref_w)
    assert_same(loss, grad, ref, grad_of(ref, b))
    assert bool((w[b["mask"]] != 1.0).any())  # the weights do something
    assert name == "gspo" or bool((grad != 0).any())  # GSPO's 3e-4 clip may cut every row


@pytest.mark.parametrize("correction", BEHAVIOUR_CORRECTIONS)
@pytest.mark.parametrize("mode", BEHAVIOUR_MODES)
def test_rollout_logprobs_as_proximal_give_weight_one_exactly(correction, mode):
    # --old_logprobs rollout: logp_prox = logp_behav, d = 0, every correction is the identity.
    b = behav_batch(3, 10, seed=15)
    w, m = behaviour_weights(b["behav"], b["behav"], b["mask"], correction, 1.0, mode,
                             lam=0.9, selected=b["sel"])
    assert torch.equal(w, torch.ones_like(w))
    assert m["behaviour/clipped_frac"] == 0.0 and m["behaviour/kl"] == 0.0


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_weights_keep_the_denominator(agg):
    # A weight of 0 (masked) removes a term but not its token from the denominator: halving
    # every weight halves the loss exactly.
    b = behav_batch(3, 10, seed=7)
    config = cfg(lam=0.9, loss_agg=agg)
    w, _ = weights(b, "token", 1.5, "mask")
    loss_w, _, _ = run(b, config, behaviour_weight=w)
    loss_h, _, _ = run(b, config, behaviour_weight=0.5 * w)
    torch.testing.assert_close(loss_h, 0.5 * loss_w, rtol=0, atol=1e-15)
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config,
                         weight=torch.where(b["mask"], w, 1.0))
    torch.testing.assert_close(loss_w, ref, rtol=0, atol=ATOL)


def test_token_credit_with_weights_is_minus_the_gradient():
    b = behav_batch(3, 9, seed=8)
    config = TraceConfig.preset("p_trace")
    w, _ = weights(b, "trace", 2.0, "truncate", lam=config.lam)
    _, grad, _ = run(b, config, behaviour_weight=w)
    credit = token_credit(b["logp"], b["old"], b["A"], b["mask"], config=config,
                          behaviour_weight=w)
    torch.testing.assert_close(credit, -grad, rtol=0, atol=0)


# --------------------------------------------------------------------------- hand examples


def _hand(d_rows, mask=None):
    behav = torch.zeros(len(d_rows), len(d_rows[0]), dtype=F64)
    prox = torch.tensor(d_rows, dtype=F64)  # d = prox - 0
    mask = torch.ones_like(prox, dtype=torch.bool) if mask is None else torch.tensor(mask)
    return prox, behav, mask


def test_truncate_and_mask_by_hand_token():
    # d = [ln 3, ln 0.25, ln 1.5], C = 2: raw w = [3, 0.25, 1.5].
    # truncate: min(w, 2) = [2, 0.25, 1.5]; mean 3.75 / 3 = 1.25; 1 of 3 capped.
    # mask: keep 1/2 <= w <= 2: [0, 0, 1.5]; mean 0.5; 2 of 3 capped. Max (uncapped) 3.
    prox, behav, mask = _hand([[math.log(3), math.log(0.25), math.log(1.5)]])
    w, m = behaviour_weights(prox, behav, mask, "token", 2.0, "truncate")
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.25, 1.5]], dtype=F64), rtol=0, atol=1e-15)
    assert m["behaviour/weight_mean"] == pytest.approx(1.25, abs=1e-15)
    assert m["behaviour/weight_max"] == pytest.approx(3.0, abs=1e-14)
    assert m["behaviour/clipped_frac"] == pytest.approx(1 / 3, abs=1e-15)
    w, m = behaviour_weights(prox, behav, mask, "token", 2.0, "mask")
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 1.5]], dtype=F64), rtol=0, atol=1e-15)
    assert m["behaviour/weight_mean"] == pytest.approx(0.5, abs=1e-15)
    assert m["behaviour/weight_max"] == pytest.approx(3.0, abs=1e-14)
    assert m["behaviour/clipped_frac"] == pytest.approx(2 / 3, abs=1e-15)
    # k3 of d, mean over the 3 tokens: (3 - 1 - ln 3) + (0.25 - 1 - ln 0.25) + (0.5 - ln 1.5)
    kl = ((2 - math.log(3)) + (-0.75 - math.log(0.25)) + (0.5 - math.log(1.5))) / 3
    assert m["behaviour/kl"] == pytest.approx(kl, abs=1e-15)


def test_truncate_and_mask_by_hand_sequence():
    # row 0: d = [ln 4, ln 4, pad]: geometric mean w = 4 on both tokens; row 1: d = [ln 2,
    # ln 0.5, ln 1]: mean 0, w = 1. C = 2: truncate row 0 -> 2; mask drops row 0 entirely.
    prox, behav, mask = _hand([[math.log(4), math.log(4), 7.0],
                               [math.log(2), math.log(0.5), 0.0]],
                              mask=[[True, True, False], [True, True, True]])
    w, m = behaviour_weights(prox, behav, mask, "sequence", 2.0, "truncate")
    torch.testing.assert_close(w, torch.tensor([[2.0, 2.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64),
                               rtol=0, atol=1e-15)
    assert m["behaviour/clipped_frac"] == pytest.approx(2 / 5, abs=1e-15)
    assert m["behaviour/weight_max"] == pytest.approx(4.0, abs=1e-14)
    w, m = behaviour_weights(prox, behav, mask, "sequence", 2.0, "mask")
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64),
                               rtol=0, atol=1e-15)
    assert m["behaviour/weight_mean"] == pytest.approx(3 / 5, abs=1e-15)


def test_trace_by_hand():
    # d = [ln 4, 0, ln 0.25], lam = 0.5, no selection: ell_1 = ln 4; ell_2 = 0.5 ln 4 / 1.5
    # = ln 4 / 3; ell_3 = (0.25 ln 4 + 0 + ln 0.25) / 1.75 = -0.75 ln 4 / 1.75 = -(3/7) ln 4.
    prox, behav, mask = _hand([[math.log(4), 0.0, math.log(0.25)]])
    w, _ = behaviour_weights(prox, behav, mask, "trace", math.inf, "truncate", lam=0.5)
    expected = torch.tensor([[4.0, 4.0 ** (1 / 3), 4.0 ** (-3 / 7)]], dtype=F64)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-15)
    # selection {1, 3}: the unselected token 2 carries the trace over (ell_2 = ln 4), and
    # ell_3 = (0.5 ln 4 + ln 0.25) / 1.5 = -(1/3) ln 4.
    sel = torch.tensor([[True, False, True]])
    w, _ = behaviour_weights(prox, behav, mask, "trace", math.inf, "truncate", lam=0.5,
                             selected=sel)
    expected = torch.tensor([[4.0, 4.0, 4.0 ** (-1 / 3)]], dtype=F64)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-15)


def test_metrics_over_loss_mask_and_kl_over_valid():
    prox, behav, mask = _hand([[math.log(3), math.log(0.25), math.log(1.5)]])
    loss_mask = torch.tensor([[False, True, True]])
    _, m = behaviour_weights(prox, behav, mask, "token", 2.0, "truncate", loss_mask=loss_mask)
    assert m["behaviour/weight_mean"] == pytest.approx(1.75 / 2, abs=1e-15)
    assert m["behaviour/weight_max"] == pytest.approx(1.5, abs=1e-15)
    assert m["behaviour/clipped_frac"] == 0.0
    kl = ((2 - math.log(3)) + (-0.75 - math.log(0.25)) + (0.5 - math.log(1.5))) / 3
    assert m["behaviour/kl"] == pytest.approx(kl, abs=1e-15)
    assert set(m) == set(BEHAVIOUR_METRIC_NAMES)


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("correction", BEHAVIOUR_CORRECTIONS)
def test_padding_never_matters_and_is_weight_one(correction):
    b = behav_batch(3, 10, seed=9)
    w1, m1 = weights(b, correction, 2.0, "mask", lam=0.8, selected=b["sel"])
    pad = ~b["mask"]
    b2 = dict(b, old=torch.where(pad, b["old"] + 30.0, b["old"]),
              behav=torch.where(pad, torch.full_like(b["behav"], -math.inf), b["behav"]))
    w2, m2 = weights(b2, correction, 2.0, "mask", lam=0.8, selected=b["sel"])
    assert torch.equal(w1, w2) and m1 == m2
    assert torch.all(w1[pad] == 1.0)


def test_extreme_behaviour_logprobs_stay_finite():
    # The engine reported -inf (or a huge gap) for a sampled token: finite weights and loss.
    b = behav_batch(2, 8, seed=10, holes=False)
    b["behav"][0, 2] = -math.inf
    b["behav"][1, 5] = b["old"][1, 5] + 80.0
    for correction in CORRECTIONS:
        for mode in BEHAVIOUR_MODES:
            w, m = weights(b, correction, 2.0, mode, lam=0.95)
            assert torch.isfinite(w).all() and all(math.isfinite(v) for v in m.values())
            loss, grad, _ = run(b, TraceConfig.preset("p_trace"), behaviour_weight=w)
            assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_empty_mask_gives_nan_metrics_and_ones():
    b = behav_batch(2, 5, seed=11)
    b["mask"][:] = False
    w, m = weights(b, "trace", 2.0, "mask", lam=0.5)
    assert torch.equal(w, torch.ones_like(w))
    assert all(math.isnan(v) for v in m.values())


def test_float32_input_gives_float32_weights():
    b = behav_batch(2, 6, seed=12)
    w, _ = behaviour_weights(b["old"].float(), b["behav"].float(), b["mask"], "token")
    assert w.dtype == torch.float32


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(correction="tokens"), "none, token, sequence, trace"),
        (dict(mode="clip"), "truncate, mask"),
        (dict(cap=0.5), "cap"),
        (dict(cap=True), "cap"),
        (dict(window="global"), "causal, sequence"),
    ],
)
def test_bad_options_name_the_valid_ones(kw, match):
    b = behav_batch(2, 5, seed=13)
    args = dict(correction="token", cap=2.0, mode="truncate", window="causal") | kw
    with pytest.raises(ValueError, match=match):
        behaviour_weights(b["old"], b["behav"], b["mask"], **args)


def test_selection_outside_mask_and_bad_shapes_are_refused():
    b = behav_batch(2, 6, seed=14)
    with pytest.raises(ValueError, match="outside mask"):
        weights(b, "trace", selected=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="logp_behav"):
        behaviour_weights(b["old"], b["behav"][:, :5], b["mask"], "token")
    with pytest.raises(ValueError, match="behaviour_weight"):
        policy_loss(b["logp"], b["old"], b["A"], b["mask"], config=cfg(),
                    behaviour_weight=torch.ones(2, 5, dtype=F64))
