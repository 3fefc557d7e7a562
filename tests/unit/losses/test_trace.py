"""`trace_log_ratio` and `select_tokens` against the loop references (float64).

Contract: `docs/ALGORITHMS.md`, sections "Selection" and "Trace log-ratio".
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.loss_reference import (
    make_batch,
    ref_causal_trace,
    ref_causal_trace_long,
    ref_select,
    ref_sequence_trace,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from strace_ds.losses import entropy_threshold, select_tokens, trace_log_ratio

F64 = torch.float64


# --------------------------------------------------------------------------- trace, small


def test_trace_hand_example():
    # delta = [1, 2, 4], all selected, lam = 0.5:
    #   z = 1, 0.5*1+2 = 2.5, 0.5*2.5+4 = 5.25 ; n = 1, 1.5, 1.75
    #   ell = [1, 2.5/1.5, 5.25/1.75] = [1, 5/3, 3]
    delta = torch.tensor([[1.0, 2.0, 4.0]], dtype=F64)
    m = torch.ones(1, 3, dtype=torch.bool)
    ell = trace_log_ratio(delta, m, 0.5)
    expected = torch.tensor([[1.0, 5 / 3, 3.0]], dtype=F64)
    torch.testing.assert_close(ell, expected, rtol=0, atol=1e-15)


def test_trace_carries_over_unselected_tokens():
    # m = [0, 1, 0, 1], delta = [9, 1, 9, 3], lam = 0.5:
    #   t1: n = 0 -> ell 0 ; t2: z = 1, n = 1 -> 1 ; t3: carry -> 1 ;
    #   t4: z = 0.5 + 3 = 3.5, n = 1.5 -> 7/3.   The 9s never enter.
    delta = torch.tensor([[9.0, 1.0, 9.0, 3.0]], dtype=F64)
    m = torch.tensor([[False, True, False, True]])
    ell = trace_log_ratio(delta, m, 0.5, window="causal")
    expected = torch.tensor([[0.0, 1.0, 1.0, 7 / 3]], dtype=F64)
    torch.testing.assert_close(ell, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.95, 1.0])
def test_trace_matches_loop_and_its_gradient(lam):
    b = make_batch(3, 17, seed=1, holes=True)
    delta = (b["logp"] - b["old"]).detach().requires_grad_(True)
    m = b["mask"]
    ell = trace_log_ratio(delta, m, lam)
    ref = ref_causal_trace(delta, m, lam)
    torch.testing.assert_close(ell, ref, rtol=0, atol=1e-12)
    # a random vector-Jacobian product: gradients flow through every delta_k inside ell_t
    v = torch.randn(ell.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    (g,) = torch.autograd.grad((ell * v).sum(), delta)
    (g_ref,) = torch.autograd.grad((ref * v).sum(), delta)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    assert torch.all(g[~m] == 0), "unselected deltas must not enter the trace"


def test_lam0_trace_is_the_token_delta_on_selected_tokens():
    b = make_batch(2, 9, seed=3)
    delta = (b["logp"] - b["old"]).detach()
    ell = trace_log_ratio(delta, b["mask"], 0.0)
    torch.testing.assert_close(ell[b["mask"]], delta[b["mask"]], rtol=0, atol=0)


def test_sequence_window_is_the_masked_mean():
    b = make_batch(3, 11, seed=4, holes=True)
    b["mask"][2] = False  # a row without selected tokens -> ell = 0
    delta = (b["logp"] - b["old"]).detach()
    ell = trace_log_ratio(delta, b["mask"], 0.7, window="sequence")
    torch.testing.assert_close(ell, ref_sequence_trace(delta, b["mask"]), rtol=0, atol=1e-14)
    assert torch.all(ell[2] == 0)


@pytest.mark.parametrize(
    "lam,dtype", [(1e-300, F64), (2.2e-309, F64), (5e-324, F64), (1e-30, torch.float32),
                  (1e-40, torch.float32)]
)
def test_trace_tiny_lam_is_finite(lam, dtype):
    # Any lam in [0, 1] is valid. For lam -> 0 the trace is the token delta (n_t = 1 + O(lam)),
    # including subnormal lam, where log(lam) or 1/lam are not safe.
    delta = torch.tensor([[0.3, -0.2, 0.5]], dtype=dtype)
    ell = trace_log_ratio(delta, torch.ones(1, 3, dtype=torch.bool), lam)
    torch.testing.assert_close(ell, delta, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- trace, T = 32k


def test_trace_long_sequence_matches_loop():
    # 32,768 tokens: lam**(t-k) under/overflows any naive cumsum; the loop is exact.
    T, lams = 32_768, [0.0, 0.5, 0.9, 0.99, 1.0]
    g = torch.Generator().manual_seed(5)
    delta = torch.randn(4, T, generator=g, dtype=F64)
    m = torch.stack(
        [
            torch.rand(T, generator=g) < 0.5,  # dense random selection
            torch.rand(T, generator=g) < 0.02,  # sparse (S-trace-like)
            torch.ones(T, dtype=torch.bool),  # everything selected
            torch.arange(T) >= 20_000,  # nothing selected for a long prefix
        ]
    )
    ref = ref_causal_trace_long(delta, m, lams)  # [L, B, T]
    for j, lam in enumerate(lams):
        ell = trace_log_ratio(delta, m, lam)
        assert torch.isfinite(ell).all(), lam
        err = (ell - ref[j]).abs().max().item()
        assert err <= 1e-10, f"lam={lam}: max |vectorised - loop| = {err:.3e}"


# --------------------------------------------------------------------------- trace, property


@st.composite
def trace_cases(draw):
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    # subnormal lam has its own test below (test_trace_tiny_lam_is_finite)
    lam = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0, allow_subnormal=False)))
    holes = draw(st.booleans())
    density = draw(st.sampled_from([0.1, 0.5, 1.0]))
    return B, T, seed, lam, holes, density


@settings(max_examples=60, deadline=None)
@given(trace_cases())
def test_property_trace_matches_loop(case):
    B, T, seed, lam, holes, density = case
    b = make_batch(B, T, seed, scale=2.0, holes=holes)
    g = torch.Generator().manual_seed(seed)
    m = b["mask"] & (torch.rand(B, T, generator=g) < density)  # right padding, holes, selection
    delta = (b["logp"] - b["old"]).detach().requires_grad_(True)
    ell = trace_log_ratio(delta, m, lam)
    ref = ref_causal_trace(delta, m, lam)
    torch.testing.assert_close(ell, ref, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(ell.sum(), delta)
    assert torch.isfinite(grad).all()


# --------------------------------------------------------------------------- selection


def test_select_threshold_ignores_padding():
    b = make_batch(4, 30, seed=6, holes=True)
    H, mask = b["entropy"].clone(), b["mask"]
    H[~mask] = 1e3  # padding entropies, huge: they must not move tau
    for q in (0.05, 0.2, 0.5, 1.0):
        m, tau = select_tokens(mask, H, q)
        expected_tau = torch.quantile(H[mask], 1 - q).item()
        assert tau == pytest.approx(expected_tau, abs=1e-12)
        assert m.dtype == torch.bool and m.shape == mask.shape
        assert torch.equal(m, torch.ge(H, expected_tau) & mask)
        H2 = torch.where(mask, H, torch.full_like(H, -1e3))
        m2, tau2 = select_tokens(mask, H2, q)
        assert tau2 == pytest.approx(tau, abs=1e-12) and torch.equal(m2, m)


def test_select_fraction_is_q():
    g = torch.Generator().manual_seed(7)
    mask = torch.arange(500)[None, :] < torch.tensor([[500], [300], [200]])  # 1000 valid
    H = torch.rand(3, 500, generator=g, dtype=F64)
    for q in (0.1, 0.2, 0.5):
        m, _ = select_tokens(mask, H, q)
        assert abs(m.sum().item() - q * 1000) <= 1, q


def test_select_q1_selects_all_valid_and_none_selects_mask():
    b = make_batch(3, 12, seed=8, holes=True)
    m, tau = select_tokens(b["mask"], b["entropy"], 1.0)
    assert torch.equal(m, b["mask"])
    assert tau == pytest.approx(b["entropy"][b["mask"]].min().item(), abs=1e-15)
    m, tau = select_tokens(b["mask"].long(), b["entropy"], None)  # 0/1 mask accepted
    assert torch.equal(m, b["mask"]) and m.dtype == torch.bool
    assert tau is None or math.isnan(tau)


def test_select_matches_reference_with_int_mask():
    b = make_batch(2, 25, seed=9)
    m, tau = select_tokens(b["mask"].to(torch.int64), b["entropy"], 0.3)
    m_ref, tau_ref = ref_select(b["mask"], b["entropy"], 0.3)
    assert torch.equal(m, m_ref) and tau == pytest.approx(tau_ref, abs=1e-12)


def test_global_threshold_makes_the_selection_split_independent():
    """One quantile over all pieces (micro-batches, ranks) gives the whole batch's selection;
    per-piece quantiles do not."""
    torch.manual_seed(3)
    H = torch.rand(16, 40, dtype=torch.float64) * torch.linspace(0.2, 3.0, 16)[:, None]
    valid = torch.rand(16, 40) < 0.8
    whole, tau = select_tokens(valid, H, 0.2)
    pieces = [slice(0, 4), slice(4, 10), slice(10, 16)]
    tau_all = entropy_threshold(torch.cat([H[r][valid[r]] for r in pieces]), 0.2)
    assert tau_all == tau
    glued = torch.cat([select_tokens(valid[r], H[r], 0.2, threshold=tau_all)[0] for r in pieces])
    assert torch.equal(glued, whole)
    local = torch.cat([select_tokens(valid[r], H[r], 0.2)[0] for r in pieces])
    assert not torch.equal(local, whole)  # the defect a per-micro-batch quantile had


def test_entropy_threshold_is_torch_quantile():
    values = torch.rand(1001, dtype=torch.float64)
    for q in (0.1, 0.2, 0.5, 1.0):
        assert entropy_threshold(values, q) == pytest.approx(
            float(torch.quantile(values, 1 - q)), abs=1e-15
        )
    assert math.isnan(entropy_threshold(values[:0], 0.2))
    with pytest.raises(ValueError, match="entropy_top_quantile"):
        entropy_threshold(values, 0.0)
