"""KL to a reference policy: per-token estimators and the two ways to use them.

Schulman's estimators ("Approximating KL divergence", 2020) of ``KL(p || q)`` from a token
``y ~ p`` with ``x = log q(y) - log p(y)``: ``k1 = -x``, ``k2 = x**2 / 2``,
``k3 = exp(x) - 1 - x``. Here ``p`` is the policy (``logp``) and ``q`` the frozen reference
(``logp_ref``). Two uses (``docs/ALGORITHMS.md``, "KL to a reference"):

* in the reward: ``R_i <- R_i - beta * sum_t M_t kl_t`` (detached), before the advantages
  (:func:`sequence_kl_penalty`);
* in the loss: ``L_t <- L_t + beta * kl_t`` with gradient, aggregated like the policy term
  (``policy_loss(..., ref_logprobs=, kl_coef=, kl_estimator=)``).
"""

from __future__ import annotations

import math

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")
KL_IN = ("reward", "loss")
"""Where the KL-to-reference term goes: subtracted from the reward, or added to the loss."""
KL_METRIC_NAMES = ("policy/kl_ref",)
"""Key added to the metrics when a reference is given: the mean per-token estimate over the
loss tokens."""


def approx_kl_k3(delta: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of ``KL(pi_old || pi_theta)`` per token, from old samples.

    With ``r = pi_theta / pi_old = exp(delta)``: ``k3 = (r - 1) - log r = exp(delta) - 1 - delta``
    (unbiased, always >= 0). :func:`kl_penalty`'s ``k3`` is this with
    ``delta = logp_ref - logp``.
    """
    return torch.expm1(delta) - delta


def kl_penalty(logp: torch.Tensor, logp_ref: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` on tokens sampled from ``pi``. ``[B, T]``.

    ::

        k1 = logp - logp_ref
        k2 = (logp - logp_ref)**2 / 2
        k3 = exp(logp_ref - logp) - (logp_ref - logp) - 1           (GRPO, Shao et al. 2024)

    ``k1`` and ``k3`` are unbiased, ``k3 >= 0`` has the lowest variance when the policies are
    close, ``k2`` is biased but >= 0. Differentiable in both arguments; a caller detaches
    ``logp_ref``. Gradients w.r.t. ``logp``: ``k1 -> 1``, ``k2 -> logp - logp_ref``,
    ``k3 -> 1 - exp(logp_ref - logp)``.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}"
        )
    if tuple(logp_ref.shape) != tuple(logp.shape):
        raise ValueError(
            f"logp_ref must have the shape of logp {tuple(logp.shape)}, got {tuple(logp_ref.shape)}"
        )
    if estimator == "k1":
        return logp - logp_ref
    if estimator == "k2":
        return 0.5 * (logp - logp_ref).square()
    return approx_kl_k3(logp_ref - logp)


def sequence_kl_penalty(
    kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The reward-side use: ``penalty_i = beta * sum_t M[i, t] kl[i, t]``, detached. ``[B]``.

    The trainer subtracts it from the reward before the advantages (``R_i - penalty_i``), the
    sequence sum of the per-token rewards ``-beta * kl_t`` (verl's ``apply_kl_penalty`` with an
    outcome reward). ``kl`` is :func:`kl_penalty` of the log-probs the answers are scored with
    (the proximal ones) against the reference's; padding is never read.

    Returns ``(penalty [B], {"policy/kl_ref": mean kl over M})`` (NaN without tokens).
    """
    if tuple(mask.shape) != tuple(kl.shape):
        raise ValueError(
            f"mask must have the shape of kl {tuple(kl.shape)}, got {tuple(mask.shape)}"
        )
    M = mask.bool()
    kl = torch.where(M, kl.detach(), torch.zeros_like(kl))
    n = int(M.sum())
    metrics = {"policy/kl_ref": float(kl.sum()) / n if n else math.nan}
    return beta * kl.sum(dim=-1), metrics
