"""`policy_loss` metrics: names, and hand-derived values on tiny 1x3 examples.

Contract: `docs/ALGORITHMS.md` ("Metrics every loss call reports"). Clip
fractions count loss tokens whose clipped branch is active (A > 0 and r > 1 + clip_high:
high; A < 0 and r < 1 - clip_low: low); approx_kl is Schulman's k3 of KL(old || new),
r - 1 - log r with r = p_new / p_old per token.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.loss_checks import F64, FORM_METRICS, METRICS, cfg, run
from helpers.loss_reference import make_batch

import strace_ds.losses as losses
from strace_ds.losses import TraceConfig


def _tiny(deltas, A, H=None):
    old = torch.tensor([[-1.0, -2.0, -0.5]], dtype=F64)
    logp = (old + torch.tensor([deltas], dtype=F64)).requires_grad_(True)
    return dict(logp=logp, old=old, A=torch.tensor(A, dtype=F64),  # A, H: [1, 3]
                mask=torch.ones(1, 3, dtype=torch.bool),
                entropy=None if H is None else torch.tensor(H, dtype=F64))


def test_metrics_names_are_floats():
    b = make_batch(2, 6, seed=31)
    _, _, out = run(b, TraceConfig.preset("s_trace"))
    assert set(METRICS) <= set(out.metrics)
    assert set(losses.METRIC_NAMES) == set(METRICS) | set(FORM_METRICS)
    assert all(isinstance(out.metrics[k], float) for k in losses.METRIC_NAMES)


def test_metrics_hand_example_lam0():
    # delta = [ln 1.5, ln 0.5, 0], A = [+1, -1, +1], lam = 0 (ell = delta), clip 0.2 / 0.28.
    # r = [1.5, 0.5, 1.0]
    #   t1: A > 0 and 1.5 > 1.28 -> high clip ; t2: A < 0 and 0.5 < 0.8 -> low clip ; t3: none
    #   clip_frac_high = clip_frac_low = 1/3
    #   L = [-min(1.5, 1.28), -min(-0.5, -0.8), -1] = [-1.28, 0.8, -1] -> loss = -1.48 / 3
    #   ratio mean (1.5 + 0.5 + 1) / 3 = 1, min 0.5, max 1.5
    #   |ell| mean = (ln 1.5 + ln 2 + 0) / 3 = ln 3 / 3
    #   k3 = r - 1 - ln r: (0.5 - ln 1.5) + (-0.5 + ln 2) + 0 = ln(4/3) -> mean ln(4/3) / 3
    #   entropy H = [1, 2, 3] -> mean 2 ; no selection -> select/frac = 1
    b = _tiny([math.log(1.5), math.log(0.5), 0.0], [[1.0, -1.0, 1.0]], H=[[1.0, 2.0, 3.0]])
    loss, _, out = run(b, cfg(lam=0.0))
    m = out.metrics
    assert loss.item() == pytest.approx(-1.48 / 3, abs=1e-14)
    assert m["policy/clip_frac_high"] == pytest.approx(1 / 3, abs=1e-14)
    assert m["policy/clip_frac_low"] == pytest.approx(1 / 3, abs=1e-14)
    assert m["trace/ratio_mean"] == pytest.approx(1.0, abs=1e-14)
    assert m["trace/ratio_min"] == pytest.approx(0.5, abs=1e-14)
    assert m["trace/ratio_max"] == pytest.approx(1.5, abs=1e-14)
    assert m["trace/abs_log_ratio_mean"] == pytest.approx(math.log(3) / 3, abs=1e-14)
    assert m["policy/approx_kl"] == pytest.approx(math.log(4 / 3) / 3, abs=1e-14)
    assert m["policy/entropy_mean"] == pytest.approx(2.0, abs=1e-14)
    assert m["select/frac"] == pytest.approx(1.0, abs=1e-14)


def test_metrics_hand_example_lam1():
    # Same deltas, lam = 1: ell = running mean = [ln 1.5, ln(0.75)/2, ln(0.75)/3]
    # r = [1.5, sqrt(.75) = 0.8660254, .75^(1/3) = 0.9085603]
    #   t1 high clip (A > 0, 1.5 > 1.28); t2: 0.866 > 0.8 -> no low clip ; t3 none
    #   L = [-1.28, -min(-0.8660, -0.8660) = 0.8660254, -0.9085603] -> sum -1.3225349
    #   ratio mean = (1.5 + 0.8660254 + 0.9085603) / 3
    #   |ell| mean = (ln 1.5 + (1/2 + 1/3) ln(4/3)) / 3
    #   approx_kl is between old and new *token* distributions: still ln(4/3) / 3
    b = _tiny([math.log(1.5), math.log(0.5), 0.0], [[1.0, -1.0, 1.0]])
    loss, _, out = run(b, cfg(lam=1.0))
    m = out.metrics
    r2, r3 = math.sqrt(0.75), 0.75 ** (1 / 3)
    assert loss.item() == pytest.approx((-1.28 + r2 - r3) / 3, abs=1e-14)
    assert m["policy/clip_frac_high"] == pytest.approx(1 / 3, abs=1e-14)
    assert m["policy/clip_frac_low"] == 0.0
    assert m["trace/ratio_mean"] == pytest.approx((1.5 + r2 + r3) / 3, abs=1e-14)
    assert m["trace/ratio_min"] == pytest.approx(r2, abs=1e-14)
    assert m["trace/ratio_max"] == pytest.approx(1.5, abs=1e-14)
    ell_abs = math.log(1.5) + (1 / 2 + 1 / 3) * math.log(4 / 3)
    assert m["trace/abs_log_ratio_mean"] == pytest.approx(ell_abs / 3, abs=1e-14)
    assert m["policy/approx_kl"] == pytest.approx(math.log(4 / 3) / 3, abs=1e-14)


def test_metrics_hand_example_s_trace():
    # delta = [ln 2, ln 0.5, 0], A = [+1, -1, +1], H = [1, 2, 3], q = 0.5, lam = 1.
    #   tau = quantile([1, 2, 3], 0.5) = 2 -> m = [0, 1, 1], select/frac = 2/3
    #   ell: t1 n = 0 -> 0 ; t2 ln 0.5 ; t3 (ln 0.5 + 0) / 2  -> r = [1, 0.5, 0.5**0.5]
    #   loss on all tokens: t2 A < 0, 0.5 < 0.8 -> low clip: clip_frac_low = 1/3, high 0
    #   L = [-1, -min(-0.5, -0.8) = 0.8, -min(0.7071, 0.8) = -0.7071]
    #   ratio mean (1 + 0.5 + 0.7071) / 3, min 0.5, max 1 ; |ell| mean = 1.5 ln 2 / 3
    #   k3: (2 - 1 - ln 2) + (0.5 - 1 + ln 2) + 0 = 0.5 -> 1/6
    b = _tiny([math.log(2.0), math.log(0.5), 0.0], [[1.0, -1.0, 1.0]], H=[[1.0, 2.0, 3.0]])
    loss, grad, out = run(b, cfg(lam=1.0, entropy_top_quantile=0.5))
    m, r3 = out.metrics, math.sqrt(0.5)
    assert grad[0, 0].item() == 0.0
    assert loss.item() == pytest.approx((-1 + 0.8 - r3) / 3, abs=1e-14)
    assert m["select/frac"] == pytest.approx(2 / 3, abs=1e-14)
    assert m["select/entropy_threshold"] == pytest.approx(2.0, abs=1e-14)
    assert m["policy/clip_frac_low"] == pytest.approx(1 / 3, abs=1e-14)
    assert m["policy/clip_frac_high"] == 0.0
    assert m["trace/ratio_mean"] == pytest.approx((1 + 0.5 + r3) / 3, abs=1e-14)
    assert m["trace/ratio_min"] == pytest.approx(0.5, abs=1e-14)
    assert m["trace/ratio_max"] == pytest.approx(1.0, abs=1e-14)
    assert m["trace/abs_log_ratio_mean"] == pytest.approx(math.log(2) / 2, abs=1e-14)
    assert m["policy/approx_kl"] == pytest.approx(1 / 6, abs=1e-14)
    assert m["policy/entropy_mean"] == pytest.approx(2.0, abs=1e-14)


def test_metrics_clip_fractions_are_over_loss_tokens():
    # delta = [ln 2, ln 0.5, ln 1.5], A = [+1, -1, +1], H = [1, 2, 3], q = 0.5, lam = 0,
    # loss on selected tokens only: tau = 2 -> m = M = [0, 1, 1].
    #   t2: r = 0.5, A < 0 -> low clip ; t3: r = 1.5, A > 0 -> high clip ; t1 (r would be
    #   2 but it is not a loss token) is not counted: low = high = 1/2 (over |M| = 2).
    #   L = [-, -min(-0.5, -0.8) = 0.8, -min(1.5, 1.28) = -1.28] -> loss = -0.48 / 2
    #   approx_kl over valid tokens: (1 - ln 2) + (-0.5 + ln 2) + (0.5 - ln 1.5) -> (1 - ln 1.5)/3
    b = _tiny([math.log(2.0), math.log(0.5), math.log(1.5)], [[1.0, -1.0, 1.0]],
              H=[[1.0, 2.0, 3.0]])
    loss, grad, out = run(b, cfg(lam=0.0, entropy_top_quantile=0.5, loss_on_selected_only=True))
    m = out.metrics
    assert loss.item() == pytest.approx(-0.24, abs=1e-14)
    assert grad[0, 0].item() == 0.0
    assert m["policy/clip_frac_low"] == pytest.approx(0.5, abs=1e-14)
    assert m["policy/clip_frac_high"] == pytest.approx(0.5, abs=1e-14)
    assert m["policy/approx_kl"] == pytest.approx((1 - math.log(1.5)) / 3, abs=1e-14)
