"""`policy_loss`, `TraceConfig` and presets against independent float64 references.

Contract: `docs/ALGORITHMS.md`. References: tests/helpers/loss_reference.py (written
from the papers' formulas without reading `strace_ds.losses`). Gradients are w.r.t. the
new log-probs and must agree to ~1e-12.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers.loss_checks import ATOL, F64, METRICS, assert_same, cfg, grad_of, run
from helpers.loss_reference import (
    AGGS,
    clipped_token_loss,
    harmonic,
    make_batch,
    ref_aggregate,
    ref_causal_trace,
    ref_grpo_loss,
    ref_gspo_loss,
    ref_select,
    ref_trace_loss,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import strace_ds.losses as losses
from strace_ds.losses import PRESETS, TraceConfig, loss_denominator, policy_loss

# --------------------------------------------------------------------------- identities


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("adv_per_token", [False, True])
def test_lam0_causal_no_selection_is_grpo(agg, adv_per_token):
    # scale 0.3 puts a good share of tokens outside [0.8, 1.28]: both branches exercised
    b = make_batch(4, 12, seed=11, holes=True, adv_per_token=adv_per_token)
    loss, grad, _ = run(b, cfg(lam=0.0, loss_agg=agg))
    ref = ref_grpo_loss(b["logp"], b["old"], b["A"], b["mask"], 0.2, 0.28, agg)
    assert_same(loss, grad, ref, grad_of(ref, b))


def test_lam0_sum_norm_with_max_len_is_dr_grpo():
    b = make_batch(3, 10, seed=12)
    loss, grad, _ = run(b, cfg(loss_agg="seq_mean_token_sum_norm"), max_len=64)
    ref = ref_grpo_loss(b["logp"], b["old"], b["A"], b["mask"], 0.2, 0.28,
                        "seq_mean_token_sum_norm", max_len=64)
    assert_same(loss, grad, ref, grad_of(ref, b))


@pytest.mark.parametrize("clip,scale", [((3e-4, 4e-4), 2e-3), ((0.2, 0.28), 0.5)])
def test_sequence_window_is_gspo(clip, scale):
    b = make_batch(6, 15, seed=13, scale=scale, holes=True)
    config = cfg(lam=0.95, window="sequence", clip_low=clip[0], clip_high=clip[1],
                 loss_agg="seq_mean_token_mean")  # lam must be unused
    loss, grad, _ = run(b, config)
    ref = ref_gspo_loss(b["logp"], b["old"], b["A"], b["mask"], *clip)
    assert_same(loss, grad, ref, grad_of(ref, b))


def test_gspo_preset_is_gspo():
    b = make_batch(5, 9, seed=14, scale=3e-4)
    loss, grad, _ = run(b, TraceConfig.preset("gspo"))
    ref = ref_gspo_loss(b["logp"], b["old"], b["A"], b["mask"], 3e-4, 4e-4)
    assert_same(loss, grad, ref, grad_of(ref, b))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_match_reference(name):
    b = make_batch(4, 14, seed=15, holes=True)
    config = TraceConfig.preset(name)
    loss, grad, _ = run(b, config)
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config, entropy=b["entropy"])
    assert_same(loss, grad, ref, grad_of(ref, b))


@pytest.mark.parametrize("lam", [0.5, 0.9, 1.0])
def test_on_policy_credit_is_redistributed(lam):
    # On-policy: delta = 0, r = 1, nothing clipped. GRPO gives token k of row i the gradient
    # -A_i / N (N = number of loss tokens, token_mean). The trace gives
    # -A_i / N * sum_{t >= k} w_{t,k} with w_{t,k} = lam^(t-k) / n_t, n_t = sum_{j<=t} lam^(t-j).
    # Every row of w sums to 1, so the row total is unchanged.
    b = make_batch(3, 9, seed=16)
    b["logp"] = b["old"].clone().requires_grad_(True)
    _, grad, _ = run(b, cfg(lam=lam, clip_high=0.2))
    ref = ref_grpo_loss(b["logp"], b["old"], b["A"], b["mask"], 0.2, 0.2, "token_mean")
    grpo_grad = grad_of(ref, b)
    torch.testing.assert_close(grad.sum(-1), grpo_grad.sum(-1), rtol=0, atol=ATOL)
    N = b["mask"].sum().item()
    expected = torch.zeros_like(grad)
    for i, T_i in enumerate(b["mask"].sum(-1).tolist()):
        for k in range(T_i):
            credit = 0.0
            for t in range(k, T_i):
                n_t = sum(lam ** (t - j) for j in range(t + 1))
                credit += lam ** (t - k) / n_t
            expected[i, k] = -b["A"][i] * credit / N
    torch.testing.assert_close(grad, expected, rtol=0, atol=ATOL)


def test_lam1_first_token_gets_harmonic_credit():
    # lam = 1: ell_t = mean(delta_1..t); d ell_t / d delta_k = 1/t for k <= t. Token 1 gets
    # sum_{t=1..T} 1/t = H_T times GRPO's per-token credit -A/T; token T gets 1/T of it.
    T, A = 7, 1.3
    b = make_batch(1, 10, seed=17)
    b["mask"] = torch.arange(10)[None, :] < T  # length 7, 3 padded
    b["logp"] = b["old"].clone().requires_grad_(True)
    _, grad, _ = run(b, cfg(lam=1.0), A=torch.tensor([A], dtype=F64))
    grpo = -A / T
    assert grad[0, 0].item() == pytest.approx(harmonic(T) * grpo, abs=ATOL)
    assert grad[0, T - 1].item() == pytest.approx(grpo / T, abs=ATOL)
    assert torch.all(grad[0, T:] == 0)


@pytest.mark.parametrize("name", ["s_trace", "highent_grpo"])
def test_selection_gives_zero_gradient_to_unselected_tokens(name):
    # the ratio form (the weight form keeps every token's own term: test_trace_forms.py)
    b = make_batch(4, 20, seed=18, holes=True)
    _, grad, _ = run(b, TraceConfig.preset(name, form="ratio"))
    m, _ = ref_select(b["mask"], b["entropy"], 0.2)
    assert torch.all(grad[~m] == 0)
    assert (grad[m] != 0).float().mean() > 0.5  # and selected tokens do get credit


def test_highent_grpo_is_grpo_on_selected_tokens():
    # lam = 0 with loss on m only: ell_t = delta_t at selected tokens, so this is GRPO-clip
    # token_mean restricted to the top-20% entropy tokens (the "80/20" paper).
    b = make_batch(4, 20, seed=19, holes=True)
    loss, grad, _ = run(b, TraceConfig.preset("highent_grpo"))
    m, _ = ref_select(b["mask"], b["entropy"], 0.2)
    ref = ref_grpo_loss(b["logp"], b["old"], b["A"], m, 0.2, 0.2, "token_mean")
    assert_same(loss, grad, ref, grad_of(ref, b))


@pytest.mark.parametrize("selected_only", [False, True])
def test_loss_on_selected_only_restricts_loss_terms(selected_only):
    b = make_batch(3, 16, seed=20, adv_per_token=True)
    config = cfg(lam=0.9, entropy_top_quantile=0.3, loss_on_selected_only=selected_only)
    loss, grad, _ = run(b, config)
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config, entropy=b["entropy"])
    assert_same(loss, grad, ref, grad_of(ref, b))
    # advantages at unselected tokens matter iff their loss terms are kept
    m, _ = ref_select(b["mask"], b["entropy"], 0.3)
    A2 = torch.where(m, b["A"], b["A"] + 5.0)
    loss2, _, _ = run(b, config, A=A2)
    assert (abs(loss2.item() - loss.item()) < 1e-14) == selected_only


# --------------------------------------------------------------------------- normalisers


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_normalizer_replaces_local_denominator(agg, as_tensor):
    # token_mean / seq_mean_token_sum_norm: sum(L*M) / normalizer.
    # seq_mean_token_mean: sum_i (per-sequence token mean) / normalizer (replaces B).
    b = make_batch(3, 10, seed=21)
    config = cfg(lam=0.8, loss_agg=agg)
    norm = torch.tensor(37.0, dtype=F64) if as_tensor else 37.0
    loss, grad, _ = run(b, config, normalizer=norm)
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config, normalizer=37.0)
    assert_same(loss, grad, ref, grad_of(ref, b))


@pytest.mark.parametrize("selected_only", [False, True])
def test_precomputed_selection_equals_the_reference_on_that_selection(selected_only):
    """A trainer's global selection passed in: the loss is the reference's with that ``m``
    (the entropies then only feed the metrics)."""
    b = make_batch(4, 12, seed=33, holes=True)
    m = b["mask"] & (torch.rand(4, 12, generator=torch.Generator().manual_seed(1)) < 0.4)
    config = cfg(lam=0.9, entropy_top_quantile=0.2, loss_on_selected_only=selected_only)
    loss, grad, out = run(b, config, selected=m)
    # the reference loops on that m
    ell = ref_causal_trace(b["logp"] - b["old"], m, 0.9)
    L = clipped_token_loss(torch.exp(ell), b["A"][:, None].expand(4, 12), 0.2, 0.28)
    ref = ref_aggregate(L, m if selected_only else b["mask"], "token_mean")
    assert_same(loss, grad, ref, grad_of(ref, b))
    assert torch.equal(out.selected, m)
    assert math.isnan(out.metrics["select/entropy_threshold"])
    assert out.metrics["select/frac"] == pytest.approx(float(m.sum() / b["mask"].sum()))
    with pytest.raises(ValueError, match="outside response_mask"):
        run(b, config, selected=m | ~b["mask"])
    with pytest.raises(ValueError, match="selected must have the shape"):
        run(b, config, selected=m[:, :5])


@pytest.mark.parametrize("agg", AGGS)
def test_loss_denominator_is_the_local_normaliser(agg):
    b = make_batch(5, 9, seed=7, holes=True)
    mask = b["mask"]
    want = {"token_mean": float(mask.sum()), "seq_mean_token_mean": 5.0,
            "seq_mean_token_sum_norm": 5.0 * 9}[agg]  # fmt: skip
    assert float(loss_denominator(mask, agg)) == want
    config = cfg(lam=0.5, loss_agg=agg)
    local, _, _ = run(b, config)
    explicit, _, _ = run(b, config, normalizer=loss_denominator(mask, agg))
    torch.testing.assert_close(local, explicit, rtol=0, atol=1e-15)
    rows = torch.tensor([True, False, True, True, False])
    got = float(loss_denominator(mask & rows[:, None], agg, max_len=20, row_mask=rows))
    assert got == {"token_mean": float((mask & rows[:, None]).sum()),
                   "seq_mean_token_mean": 3.0, "seq_mean_token_sum_norm": 60.0}[agg]  # fmt: skip
    with pytest.raises(ValueError, match="unknown loss_agg"):
        loss_denominator(mask, "mean")


# --------------------------------------------------------------------------- presets


PRESET_TABLE = {
    # name: (lam, window, clip_low, clip_high, entropy_top_quantile, selected_only, loss_agg,
    #        form)
    "grpo": (0.0, "causal", 0.2, 0.2, None, False, "token_mean", "ratio"),
    "gspo": (None, "sequence", 3e-4, 4e-4, None, False, "seq_mean_token_mean", "ratio"),
    "highent_grpo": (0.0, "causal", 0.2, 0.2, 0.2, True, "token_mean", "ratio"),
    "p_trace": (0.95, "causal", 0.2, 0.28, None, False, "token_mean", "weight"),
    "s_trace": (0.95, "causal", 0.2, 0.28, 0.2, False, "token_mean", "weight"),
    # their surrogates (and SAPO's temperatures): tests/unit/losses/test_cispo_sapo.py
    "cispo": (0.0, "causal", 1.0, 4.0, None, False, "token_mean", "ratio"),
    "sapo": (0.0, "causal", 0.2, 0.2, None, False, "seq_mean_token_mean", "ratio"),
}


@pytest.mark.parametrize("name", sorted(PRESET_TABLE))
def test_preset_values(name):
    lam, window, lo, hi, q, sel, agg, form = PRESET_TABLE[name]
    c = TraceConfig.preset(name)
    assert c == PRESETS[name]
    if lam is not None:  # gspo: lam unused ("—" in the table)
        assert c.lam == lam
    assert (c.window, c.clip_low, c.clip_high) == (window, lo, hi)
    assert c.entropy_top_quantile == q
    assert (c.loss_on_selected_only, c.loss_agg, c.form) == (sel, agg, form)
    assert (c.weight_clock, c.weight_min, c.weight_max) == ("selected", 0.0, 2.0)


def test_preset_names_and_unknown_name():
    assert set(PRESETS) == set(PRESET_TABLE)
    with pytest.raises(ValueError) as info:
        TraceConfig.preset("ppo_trace")
    for name in PRESET_TABLE:
        assert name in str(info.value)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "field,value",
    [
        ("lam", -0.01),
        ("lam", 1.01),
        ("window", "bidirectional"),
        ("loss_agg", "sum"),
        ("entropy_top_quantile", 0.0),
        ("entropy_top_quantile", 1.5),
        ("entropy_top_quantile", -0.2),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TraceConfig.preset("p_trace"), **{field: value})


def test_config_accepts_boundaries():
    cfg(lam=0.0)
    cfg(lam=1.0, entropy_top_quantile=1.0)


def test_s_trace_without_entropy_raises():
    b = make_batch(2, 5, seed=22)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(b["logp"], b["old"], b["A"], b["mask"], entropy=None,
                    config=TraceConfig.preset("s_trace"))


@pytest.mark.parametrize(
    "field,bad",
    [
        ("old_logprobs", lambda b: dict(old=b["old"][:, :-1])),
        ("response_mask", lambda b: dict(mask=b["mask"][:1])),
        ("advantages", lambda b: dict(A=b["A"][:-1])),
        ("advantages", lambda b: dict(A=torch.zeros(3, 4, dtype=F64))),
        ("entropy", lambda b: dict(entropy=b["entropy"][:, :-1])),
    ],
)
def test_shape_mismatch_names_the_field(field, bad):
    b = dict(make_batch(3, 6, seed=23))
    b.update(bad(b))
    with pytest.raises(ValueError, match=field):
        policy_loss(b["logp"], b["old"], b["A"], b["mask"], entropy=b["entropy"],
                    config=TraceConfig.preset("s_trace"))


# --------------------------------------------------------------------------- edge cases


def test_length_one_sequences_are_grpo_for_any_lam():
    # ell_1 = delta_1 for every lam: a one-token answer has no history to weigh.
    b = make_batch(4, 1, seed=24, scale=0.5)
    for lam in (0.0, 0.5, 1.0):
        loss, grad, _ = run(b, cfg(lam=lam))
        ref = ref_grpo_loss(b["logp"], b["old"], b["A"], b["mask"], 0.2, 0.28, "token_mean")
        assert_same(loss, grad, ref, grad_of(ref, b))


@pytest.mark.parametrize("agg", AGGS)
def test_fully_masked_row(agg):
    b = make_batch(3, 8, seed=25, holes=True)
    b["mask"][1] = False
    config = cfg(lam=0.9, loss_agg=agg)
    loss, grad, out = run(b, config)
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config)
    assert_same(loss, grad, ref, grad_of(ref, b))
    assert torch.all(grad[1] == 0)
    assert all(math.isfinite(out.metrics[k]) for k in METRICS if k != "select/entropy_threshold")


@pytest.mark.parametrize("name", ["grpo", "gspo", "p_trace"])
def test_fully_masked_batch_gives_zero_attached_loss(name):
    # e.g. a gradient-accumulation micro-batch of padding: the engine still calls backward
    b = make_batch(2, 5, seed=32)
    b["mask"][:] = False
    loss, grad, _ = run(b, TraceConfig.preset(name))  # autograd.grad needs a graph
    assert loss.item() == 0.0 and torch.all(grad == 0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_zero_advantages_give_zero_gradient(name):
    b = make_batch(3, 10, seed=26)
    loss, grad, _ = run(b, TraceConfig.preset(name), A=torch.zeros(3, dtype=F64))
    assert loss.item() == 0.0 and torch.all(grad == 0)


def _clamp_bound() -> float:
    """The documented clamp on ell before exp (docs/ALGORITHMS.md "Numerics")."""
    names = [n for n in dir(losses) if n.isupper() and "CLAMP" in n
             and isinstance(getattr(losses, n), (int, float))]
    assert names, "strace_ds.losses should expose the ell clamp bound as a constant"
    return float(getattr(losses, names[0]))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_extreme_deltas_stay_finite(name):
    b = make_batch(3, 12, seed=27)
    sign = torch.where(torch.rand(3, 12, generator=torch.Generator().manual_seed(0)) < 0.5, 1, -1)
    b["logp"] = (b["old"] + 50.0 * sign).detach().requires_grad_(True)
    loss, grad, out = run(b, TraceConfig.preset(name))
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    for k in METRICS:
        v = out.metrics[k]
        assert isinstance(v, float) and (math.isfinite(v) or k == "select/entropy_threshold"), k


def test_clamp_bound_caps_the_ratio():
    # One token, delta = +50, A = -1: the unclipped branch is active (r A < clip(r) A), so
    # L = -r A = exp(C) with C the clamp bound, and the ratio metric reports exp(C).
    C = _clamp_bound()
    assert 0 < C < 50
    old = torch.tensor([[-60.0]], dtype=F64)
    logp = (old + 50.0).requires_grad_(True)
    A, mask = torch.tensor([-1.0], dtype=F64), torch.ones(1, 1, dtype=torch.bool)
    out = policy_loss(logp, old, A, mask, entropy=None, config=TraceConfig.preset("p_trace"))
    assert out.loss.item() == pytest.approx(math.exp(C), rel=1e-12)
    assert out.metrics["trace/ratio_max"] == pytest.approx(math.exp(C), rel=1e-12)


def test_bf16_inputs_close_to_float32():
    b = make_batch(4, 24, seed=28, scale=0.2)
    config = TraceConfig.preset("s_trace")
    lp16 = b["logp"].detach().bfloat16().requires_grad_(True)
    old16, H16 = b["old"].bfloat16(), b["entropy"].bfloat16()
    out16 = policy_loss(lp16, old16, b["A"].float(), b["mask"], entropy=H16, config=config)
    (g16,) = torch.autograd.grad(out16.loss, lp16)
    # float32 on exactly the same (bf16-rounded) inputs: only internal precision differs
    lp32 = lp16.detach().float().requires_grad_(True)
    out32 = policy_loss(lp32, old16.float(), b["A"].float(), b["mask"], entropy=H16.float(),
                        config=config)
    (g32,) = torch.autograd.grad(out32.loss, lp32)
    assert torch.isfinite(out16.loss) and torch.isfinite(g16).all()
    assert abs(out16.loss.float().item() - out32.loss.item()) < 2e-2
    torch.testing.assert_close(g16.float(), g32, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_advantages_b_and_bt_broadcast_equal(name):
    b = make_batch(3, 9, seed=29)
    loss1, grad1, _ = run(b, TraceConfig.preset(name))
    loss2, grad2, _ = run(b, TraceConfig.preset(name), A=b["A"][:, None].expand(3, 9).clone())
    assert_same(loss1, grad1, loss2.double(), grad2.double(), atol=0)


def test_mask_bool_and_01_equal_and_padding_invariant():
    b = make_batch(3, 10, seed=30, holes=True)
    config = TraceConfig.preset("s_trace")
    loss1, grad1, out1 = run(b, config)
    loss2, grad2, out2 = run(dict(b, mask=b["mask"].float()), config)
    assert_same(loss1, grad1, loss2.double(), grad2.double(), atol=0)
    # change every padded logp / old / entropy / advantage: nothing may move
    pad = ~b["mask"]
    b3 = dict(b, old=torch.where(pad, b["old"] - 7.0, b["old"]),
              entropy=torch.where(pad, -b["entropy"], b["entropy"]),
              A=torch.where(pad, torch.full((3, 10), 9.0, dtype=F64), b["A"][:, None]))
    b3["logp"] = torch.where(pad, b["logp"] + 3.0, b["logp"]).detach().requires_grad_(True)
    loss3, grad3, out3 = run(b3, config)
    assert_same(loss1, grad1, loss3.double(), grad3.double())
    for k in METRICS:
        assert out3.metrics[k] == pytest.approx(out1.metrics[k], abs=1e-12, nan_ok=True), k


# --------------------------------------------------------------------------- properties


@st.composite
def loss_cases(draw):
    B, T = draw(st.integers(1, 4)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    config = cfg(
        lam=draw(st.one_of(st.sampled_from([0.0, 1.0]),
                           st.floats(0.0, 1.0, allow_subnormal=False))),
        window=draw(st.sampled_from(["causal", "sequence"])),
        clip_low=draw(st.floats(1e-4, 0.5)),
        clip_high=draw(st.floats(1e-4, 0.5)),
        entropy_top_quantile=draw(st.sampled_from([None, 0.2, 0.7, 1.0])),
        loss_on_selected_only=draw(st.booleans()),
        loss_agg=draw(st.sampled_from(AGGS)),
    )
    return B, T, seed, draw(st.booleans()), draw(st.booleans()), config


@settings(max_examples=40, deadline=None)
@given(loss_cases())
def test_property_policy_loss_matches_reference(case):
    B, T, seed, holes, adv_per_token, config = case
    b = make_batch(B, T, seed, holes=holes, adv_per_token=adv_per_token)
    b["mask"][0, 0] = True  # selection needs at least one valid token
    loss, grad, _ = run(b, config)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    ref = ref_trace_loss(b["logp"], b["old"], b["A"], b["mask"], config, entropy=b["entropy"])
    assert_same(loss, grad, ref, grad_of(ref, b), atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.integers(0, 2**31 - 1),
       st.floats(1e-4, 0.3), st.floats(1e-4, 0.3), st.sampled_from([1e-3, 0.1, 1.0]))
def test_property_gspo_identity(B, T, seed, lo, hi, scale):
    b = make_batch(B, T, seed, scale=scale, holes=True)
    config = cfg(lam=0.5, window="sequence", clip_low=lo, clip_high=hi,
                 loss_agg="seq_mean_token_mean")
    loss, grad, _ = run(b, config)
    ref = ref_gspo_loss(b["logp"], b["old"], b["A"], b["mask"], lo, hi)
    assert_same(loss, grad, ref, grad_of(ref, b), atol=1e-10)
