"""Shared by the loss test modules (``tests/unit/losses``): every-field configs, one call of
`policy_loss` with its gradient, the metric names and the float64 comparison."""

from __future__ import annotations

import torch

from strace_ds.losses import TraceConfig, policy_loss

F64 = torch.float64
ATOL = 1e-12
METRICS = (
    "policy/clip_frac_low",
    "policy/clip_frac_high",
    "trace/ratio_mean",
    "trace/ratio_min",
    "trace/ratio_max",
    "trace/abs_log_ratio_mean",
    "select/frac",
    "select/entropy_threshold",
    "policy/entropy_mean",
    "policy/approx_kl",
)
FORM_METRICS = (
    "trace/gated_frac",
    "trace/weight_mean",
    "trace/weight_max",
    "trace/weight_clipped_frac",
)
"""The gate's and the weight's figures: NaN in the forms they do not belong to."""


def cfg(**overrides) -> TraceConfig:
    """Every field explicit (no reliance on defaults); GRPO-clip unless overridden."""
    fields = dict(
        lam=0.0,
        window="causal",
        clip_low=0.2,
        clip_high=0.28,
        entropy_top_quantile=None,
        loss_on_selected_only=False,
        loss_agg="token_mean",
    )
    fields.update(overrides)
    return TraceConfig(**fields)


def run(b, config, A=None, **kw):
    """Loss, d loss / d logp, and the output of `policy_loss` for batch `b`."""
    out = policy_loss(
        b["logp"], b["old"], b["A"] if A is None else A, b["mask"],
        entropy=kw.pop("entropy", b["entropy"]), config=config, **kw,
    )
    (grad,) = torch.autograd.grad(out.loss, b["logp"], allow_unused=False)
    return out.loss, grad, out


def grad_of(loss, b):
    (grad,) = torch.autograd.grad(loss, b["logp"])
    return grad


def assert_same(loss, grad, ref_loss, ref_grad, atol=ATOL):
    torch.testing.assert_close(loss.detach().double(), ref_loss.detach(), rtol=0, atol=atol)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=atol)
