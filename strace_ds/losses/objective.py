"""The clipped trace objective, its aggregation and its metrics: ``policy_loss``.

One implementation serves every preset (``PRESETS``): GRPO, GSPO, the 80/20 high-entropy
mask, CISPO, SAPO, P-trace and S-trace differ only in their :class:`TraceConfig`. The trace
formulas are this project's formalisation of the paper's abstract; CISPO's and SAPO's are their
papers' (``docs/ALGORITHMS.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from strace_ds.losses.config import LOSS_AGGREGATIONS, TraceConfig
from strace_ds.losses.kl import approx_kl_k3, kl_penalty
from strace_ds.losses.trace import past_log_weight, select_tokens, trace_log_ratio

METRIC_NAMES = (
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
    "trace/gated_frac",
    "trace/weight_mean",
    "trace/weight_max",
    "trace/weight_clipped_frac",
)
"""Keys of ``PolicyLossOutput.metrics``. NaN marks a figure that does not apply (no entropy
given, no selection, a form without a gate or a weight) or has no tokens to average."""
ENTROPY_METRIC_NAMES = ("policy/entropy_bonus",)
"""Added to ``PolicyLossOutput.metrics`` when ``entropy_coef > 0``: ``entropy_coef`` times the
mean entropy over the loss tokens ``M`` (how much the bonus lowers a token's term)."""


@dataclass
class PolicyLossOutput:
    """What one call of :func:`policy_loss` returns."""

    loss: torch.Tensor
    """Scalar, differentiable w.r.t. ``logprobs``."""
    metrics: dict[str, float]
    """Figures named in ``METRIC_NAMES``, and ``KL_METRIC_NAMES`` when a reference is given."""
    token_loss: torch.Tensor
    """``[B, T]`` per-token term that enters the aggregate, ``w_t L_t + beta kl_t`` (``L_t``
    without a behaviour weight or a KL term), before masking and aggregation."""
    loss_mask: torch.Tensor
    """``[B, T]`` bool, the tokens ``M`` whose loss terms enter the aggregate."""
    selected: torch.Tensor
    """``[B, T]`` bool, the selection ``m`` that drives the trace."""
    trace_ratio: torch.Tensor
    """``[B, T]`` detached trace ratio ``r_t = exp(clamp(ell_t))``."""


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> torch.Tensor:
    """PPO's pessimistic clipped objective as a loss: ``L = -min(r A, clip(r, 1-lo, 1+hi) A)``.

    Shapes broadcast; returns ``[B, T]``.
    """
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(-ratio * advantages, -clipped * advantages)


def sapo_gate(
    ratio: torch.Tensor, advantages: torch.Tensor, tau_pos: float, tau_neg: float
) -> torch.Tensor:
    """SAPO's soft gate (Gao et al., 2025, arXiv 2511.20347): ``f(r) = 4/tau sigmoid(tau (r - 1))``
    with ``tau = tau_pos`` where ``A > 0`` and ``tau_neg`` elsewhere.

    ``f(1) = 2/tau`` and ``f'(r) = 4 sigmoid(tau (r-1)) (1 - sigmoid(tau (r-1)))``, so
    ``f'(1) = 1``: on-policy the gate's gradient is the unclipped ratio's. Shapes broadcast.
    """
    pos, neg = (torch.tensor(v, dtype=ratio.dtype, device=ratio.device) for v in (tau_pos, tau_neg))
    tau = torch.where(advantages > 0, pos, neg)  # in the ratio's dtype (float64 stays exact)
    return torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)


def token_objective(
    ratio: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    config: TraceConfig,
) -> torch.Tensor:
    """The per-token loss ``L_t`` of ``config.surrogate`` on the (trace) ratio ``r_t``, ``[B, T]``:

    * ``clip``:  ``L_t = -min(r_t A_t, clip(r_t, 1 - clip_low, 1 + clip_high) A_t)`` (PPO);
    * ``cispo``: ``L_t = -sg(clip(r_t, 1 - clip_low, 1 + clip_high)) A_t log pi_theta(y_t)``
      (MiniMax-M1, Chen et al., 2025, arXiv 2506.13585, eq. 4): the clipped importance weight
      is a constant, so every token keeps the gradient ``-clip(r_t) A_t`` w.r.t. its log-prob;
    * ``sapo``:  ``L_t = -f(r_t) A_t`` with SAPO's soft gate :func:`sapo_gate`, gradient
      ``-4 s (1 - s) r_t A_t``, ``s = sigmoid(tau (r_t - 1))``.

    ``logprobs`` (zero at padding) is only read by ``cispo``.
    """
    if config.surrogate == "cispo":
        weight = ratio.detach().clamp(1.0 - config.clip_low, 1.0 + config.clip_high)
        return -weight * advantages * logprobs
    if config.surrogate == "sapo":
        return -sapo_gate(ratio, advantages, config.sapo_tau_pos, config.sapo_tau_neg) * advantages
    return clipped_surrogate(ratio, advantages, config.clip_low, config.clip_high)


def loss_denominator(
    loss_mask: torch.Tensor,
    loss_agg: str,
    max_len: int | None = None,
    row_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The denominator of aggregation ``loss_agg`` over the loss tokens ``M = loss_mask``.

    * ``token_mean``: ``sum(M)``, the loss tokens (the selected ones when the loss is on
      the selection only: counted, not estimated as ``q x valid``);
    * ``seq_mean_token_mean``: the number of rows;
    * ``seq_mean_token_sum_norm``: rows ``x max_len`` (``max_len`` defaults to T).

    ``row_mask`` (``[B]`` bool) restricts the rows that count (a trainer's rows excluded from
    the loss, e.g. overlong or zero-variance groups); by default every row counts. This is the
    one place that defines the denominators: :func:`aggregate_loss` uses it locally and a
    trainer sums it over micro-batches and ranks to get the global normaliser. Returned
    unclamped (a float64 scalar).
    """
    if loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}")
    B, T = loss_mask.shape
    if loss_agg == "token_mean":
        return loss_mask.sum(dtype=torch.float64)
    rows = (
        torch.tensor(float(B), dtype=torch.float64)
        if row_mask is None
        else row_mask.sum(dtype=torch.float64)
    )
    if loss_agg == "seq_mean_token_mean":
        return rows
    return rows * (T if max_len is None else max_len)


def aggregate_loss(
    token_loss: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg: str,
    max_len: int | None = None,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce ``[B, T]`` token losses over the mask ``M`` to a scalar.

    * ``token_mean``: ``sum(L*M) / sum(M)`` (DAPO);
    * ``seq_mean_token_mean``: ``mean_i [ sum_t(L*M) / max(sum_t M, 1) ]`` (GRPO, GSPO papers);
    * ``seq_mean_token_sum_norm``: ``sum(L*M) / (B * max_len)`` (Dr. GRPO; ``max_len``
      defaults to T).

    ``normalizer`` replaces the local denominator (:func:`loss_denominator`) so that
    micro-batches of a gradient-accumulation step can share one global normaliser and their
    summed gradients equal the full batch's.
    """
    mask = loss_mask.to(token_loss.dtype)
    masked = token_loss * mask
    if loss_agg == "seq_mean_token_mean":
        total = (masked.sum(dim=-1) / mask.sum(dim=-1).clamp_min(1.0)).sum()
    else:
        total = masked.sum()
    if normalizer is None:
        denom = loss_denominator(loss_mask.bool(), loss_agg, max_len).clamp_min(1.0)
        normalizer = denom.to(token_loss.dtype)
    return total / normalizer


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor | None = None,
    config: TraceConfig | None = None,
    max_len: int | None = None,
    normalizer: float | torch.Tensor | None = None,
    selected: torch.Tensor | None = None,
    behaviour_weight: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy_coef: float = 0.0,
) -> PolicyLossOutput:
    """The trace policy loss for a batch of answers.

    With ``delta = logprobs - old_logprobs``, the selection ``m`` (:func:`select_tokens`) and
    the trace log-ratio ``ell`` (:func:`trace_log_ratio`)::

        r_t = exp(clamp(ell_t, -c, c))                       (c = config.log_ratio_clamp)
        L_t = -min(r_t A_t, clip(r_t, 1 - clip_low, 1 + clip_high) A_t)
        loss = aggregate over M = (m if loss_on_selected_only else response_mask)
               of  w_t L_t + beta kl_t - entropy_coef H_t

    in the default ``form="ratio"`` and ``surrogate="clip"``; ``surrogate="cispo"`` and
    ``"sapo"`` replace ``L_t`` by CISPO's detached clipped weight times ``A_t log pi`` or
    SAPO's soft gate (:func:`token_objective`). ``form="gate"`` builds the same trace from
    ``dhat_k = delta_k`` while token k's own ratio ``rho_k`` is inside its trust region on
    ``A_k``'s side, ``stopgrad(delta_k)`` once it has left (same values, no gradient pushes a
    token past its bound). ``form="weight"`` keeps each token's own ratio and a detached weight::

        L_t = -w_t min(rho_t A_t, clip(rho_t, 1 - clip_low, 1 + clip_high) A_t)
        w_t = clip(exp(past_log_weight(delta, m, lam, clock)_t), weight_min, weight_max)

    (``docs/ALGORITHMS.md``, "Trace forms"). Then the optional detached behaviour weight
    ``w`` (:func:`behaviour_weights`; 1 when not given) and the optional KL-to-reference term
    ``kl_t = kl_penalty(logprobs, ref, estimator)`` (:func:`kl_penalty`; ``beta = kl_coef``, 0
    when not given), and the optional entropy bonus ``-entropy_coef H_t`` (gradient through
    ``entropy``, which must then carry one). All three leave the denominator of
    the aggregation as it is; without them the loss is exactly the plain trace loss.

    Why a trace: the exact off-policy gradient of token t carries the historical weight
    ``W_t = prod_{k<t} rho_k``; PPO/GRPO drop it (``lam = 0``), the full product is unbiased
    but its variance explodes with length, and the trace ratio ``exp(ell_t)`` is a normalised
    geometric average of recent ratios that interpolates between the two. The trust region is
    kept per token on the trace ratio, so only the tokens whose trace leaves it are cut
    (P-trace), instead of a whole answer (GSPO, ``window="sequence"``).

    Args:
        logprobs: ``[B, T]`` log-probs of the sampled tokens under the current policy.
        old_logprobs: ``[B, T]`` log-probs under the sampling (old) policy; detached inside.
        advantages: ``[B]`` per answer or ``[B, T]`` per token.
        response_mask: ``[B, T]`` bool or 0/1, the valid answer tokens.
        entropy: ``[B, T]`` token entropies of the current policy; required when
            ``config.entropy_top_quantile`` is set, else only reported.
        config: the family member; defaults to ``TraceConfig.preset("s_trace")``... only when
            entropy is given; without entropy the default is ``p_trace``.
        max_len: the ``max_len`` of ``seq_mean_token_sum_norm`` (defaults to T).
        normalizer: global denominator for gradient accumulation (see ``aggregate_loss``).
        selected: ``[B, T]`` bool, a precomputed selection ``m`` (a trainer's one decision
            per step over all ranks, ``docs/ALGORITHMS.md`` "Selection"); it must lie inside
            ``response_mask``. When given, ``entropy`` is only reported and the
            ``select/entropy_threshold`` metric is NaN (the caller knows its threshold).
            Without it the quantile is taken over the valid tokens of the tensors passed in.
        behaviour_weight: ``[B, T]`` detached weights from :func:`behaviour_weights` (the
            behaviour -> proximal correction), multiplying each policy term ``L_t``.
        ref_logprobs: ``[B, T]`` log-probs under the reference policy (detached inside); when
            given, ``policy/kl_ref`` (mean ``kl_t`` over ``M``) is reported even at
            ``kl_coef = 0``.
        kl_coef: ``beta >= 0``, the weight of the KL term in the loss (``--kl_in loss``).
        kl_estimator: one of ``KL_ESTIMATORS`` (``k1``, ``k2``, ``k3``).
        entropy_coef: ``>= 0``, the weight of the entropy bonus on the loss tokens
            (``--entropy_coef``); needs ``entropy`` (with its gradient to be of any use).
            0 leaves the loss and its gradient bit-identical. With it ``> 0`` the metrics
            hold ``policy/entropy_bonus`` (``ENTROPY_METRIC_NAMES``).

    Computation runs in float32 for half-precision inputs (float64 stays float64); the
    returned loss has that dtype.
    """
    if config is None:
        config = TraceConfig.preset("s_trace" if entropy is not None else "p_trace")
    _check_inputs(logprobs, old_logprobs, advantages, response_mask, entropy)
    _check_extras(logprobs, behaviour_weight, ref_logprobs, kl_coef)
    _check_coef("entropy_coef", entropy_coef, entropy, "entropy (the policy's token entropies)")
    entropy_grad, entropy = entropy, (None if entropy is None else entropy.detach())
    work = torch.float64 if logprobs.dtype == torch.float64 else torch.float32
    logp = logprobs.to(work)
    old = old_logprobs.detach().to(work)
    adv = advantages.detach().to(work)
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv  # [B, 1] or [B, T]
    valid = response_mask.bool()

    if selected is None:
        selected, tau = select_tokens(valid, entropy, config.entropy_top_quantile)
    else:
        selected, tau = _check_selection(selected, valid), math.nan
    # Padding may hold garbage log-probs: zero their delta so they cannot poison the trace.
    delta = torch.where(valid, logp - old, torch.zeros_like(logp))  # [B, T]
    c = config.log_ratio_clamp
    gate = weight = None
    if config.form == "weight":
        # Each token keeps its own clipped ratio; the trace becomes a detached weight.
        ell = delta.clamp(-c, c)
        weight = _historical_weight(delta, selected, valid, config)
    else:
        if config.form == "gate":
            # Token k's log-ratio keeps its gradient only inside its own trust region, in the
            # direction its advantage pushes: no term of the trace can push it further out.
            gate = _open_gate(delta.detach().clamp(-c, c), adv, config)
            delta = torch.where(gate, delta, delta.detach())
        ell = trace_log_ratio(delta, selected, config.lam, config.window).clamp(-c, c)
    ratio = torch.exp(ell)  # [B, T]
    token_loss = token_objective(ratio, torch.where(valid, logp, torch.zeros_like(logp)), adv,
                                 config)  # fmt: skip
    if weight is not None:
        token_loss = token_loss * weight[0]
    if behaviour_weight is not None:  # padding gets 1: its garbage must not reach the sum
        w = behaviour_weight.detach().to(device=logp.device, dtype=work)
        token_loss = token_loss * torch.where(valid, w, torch.ones_like(w))
    loss_mask = selected if config.loss_on_selected_only else valid
    kl_ref = None
    if ref_logprobs is not None:
        # Zero both log-probs at padding before the estimator: exp of garbage there would give
        # inf, and 0 * inf = NaN in the backward pass even through a masked-out branch.
        zero = torch.zeros_like(logp)
        ref = ref_logprobs.detach().to(device=logp.device, dtype=work)
        kl_ref = kl_penalty(
            torch.where(valid, logp, zero), torch.where(valid, ref, zero), kl_estimator
        )  # [B, T]
        if kl_coef != 0.0:  # beta = 0 leaves the loss and its gradient bit-identical
            token_loss = token_loss + kl_coef * kl_ref
    if entropy_coef != 0.0:  # 0 leaves the loss and its gradient bit-identical
        h = entropy_grad.to(device=logp.device, dtype=work)
        token_loss = token_loss - entropy_coef * torch.where(valid, h, torch.zeros_like(h))
    loss = aggregate_loss(token_loss, loss_mask, config.loss_agg, max_len, normalizer)

    metrics = _loss_metrics(
        ratio.detach(),
        ell.detach(),
        adv,
        delta.detach(),
        valid,
        selected,
        loss_mask,
        entropy,
        tau,
        config,
    )
    metrics.update(_form_metrics(gate, weight, selected, loss_mask))
    if kl_ref is not None:
        metrics["policy/kl_ref"] = _masked_mean(kl_ref.detach(), loss_mask.to(work))
    if entropy_coef != 0.0:
        h = torch.where(valid, entropy.to(device=logp.device, dtype=work), torch.zeros_like(logp))
        metrics["policy/entropy_bonus"] = entropy_coef * _masked_mean(h, loss_mask.to(work))
    return PolicyLossOutput(
        loss=loss,
        metrics=metrics,
        token_loss=token_loss.detach(),
        loss_mask=loss_mask,
        selected=selected,
        trace_ratio=ratio.detach(),
    )


def token_credit(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor | None = None,
    config: TraceConfig | None = None,
    max_len: int | None = None,
    selected: torch.Tensor | None = None,
    behaviour_weight: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
) -> torch.Tensor:
    """Credit each token receives: ``-d loss / d logprobs``, ``[B, T]``.

    A gradient-ascent step moves ``logp(y_t)`` up by this amount (times the learning rate),
    so positive credit reinforces the token. GRPO gives every token of an answer the same
    credit ``A / N``; traces redistribute it along the answer. ``behaviour_weight`` and the
    KL arguments are :func:`policy_loss`'s (the credit then includes ``-beta d kl / d logp``).
    """
    logp = logprobs.detach().clone().requires_grad_(True)
    out = policy_loss(
        logp,
        old_logprobs,
        advantages,
        response_mask,
        entropy,
        config,
        max_len,
        selected=selected,
        behaviour_weight=behaviour_weight,
        ref_logprobs=ref_logprobs,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
    )
    (grad,) = torch.autograd.grad(out.loss, logp)
    return -grad


def _open_gate(delta: torch.Tensor, adv: torch.Tensor, config: TraceConfig) -> torch.Tensor:
    """``[B, T]`` bool: token ``k``'s ratio is inside its own trust region where it matters.

    Closed (False) iff ``A_k > 0 and rho_k > 1 + clip_high`` or ``A_k < 0 and
    rho_k < 1 - clip_low``: exactly where PPO's clipped token term has no gradient.
    """
    rho = torch.exp(delta)
    a = adv.expand_as(rho)
    closed = ((a > 0) & (rho > 1.0 + config.clip_high)) | ((a < 0) & (rho < 1.0 - config.clip_low))
    return ~closed


def _historical_weight(
    delta: torch.Tensor, selected: torch.Tensor, valid: torch.Tensor, config: TraceConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight form's ``(w, W)``: ``W_t = exp(clamp(log W_t))`` from
    :func:`past_log_weight` and ``w_t = clip(W_t, weight_min, weight_max)``, both detached."""
    clock = selected if config.weight_clock == "selected" else valid
    log_w = past_log_weight(delta, selected, config.lam, clock).to(delta.dtype)
    c = config.log_ratio_clamp
    raw = torch.exp(log_w.clamp(-c, c))
    return raw.clamp(config.weight_min, config.weight_max), raw


def _form_metrics(
    gate: torch.Tensor | None,
    weight: tuple[torch.Tensor, torch.Tensor] | None,
    selected: torch.Tensor,
    loss_mask: torch.Tensor,
) -> dict[str, float]:
    """The gate's and the weight's figures (NaN for the forms they do not belong to).

    ``trace/gated_frac``: share of the trace's tokens ``m`` whose gate is closed;
    ``trace/weight_mean`` the applied ``w`` and ``trace/weight_max`` the unclipped ``W`` over
    the loss tokens ``M``; ``trace/weight_clipped_frac`` the share of ``M`` where the bounds
    changed ``W``.
    """
    nan = math.nan
    out = {"trace/gated_frac": nan, "trace/weight_mean": nan, "trace/weight_max": nan,
           "trace/weight_clipped_frac": nan}  # fmt: skip
    if gate is not None:
        n = int(selected.sum())
        out["trace/gated_frac"] = float((~gate & selected).sum()) / n if n else nan
    if weight is not None and bool(loss_mask.any()):
        w, raw = weight[0][loss_mask], weight[1][loss_mask]
        out["trace/weight_mean"] = float(w.mean())
        out["trace/weight_max"] = float(raw.max())
        out["trace/weight_clipped_frac"] = float((w != raw).to(w.dtype).mean())
    return out


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    count = int(mask.sum())
    return float((x * mask).sum() / count) if count else math.nan


def _loss_metrics(
    ratio: torch.Tensor,
    ell: torch.Tensor,
    adv: torch.Tensor,
    delta: torch.Tensor,
    valid: torch.Tensor,
    selected: torch.Tensor,
    loss_mask: torch.Tensor,
    entropy: torch.Tensor | None,
    tau: float,
    config: TraceConfig,
) -> dict[str, float]:
    """The figures of ``METRIC_NAMES``; averages over the loss tokens ``M`` unless noted."""
    M = loss_mask
    Mf = M.to(ratio.dtype)
    # clip: the clipped branch is active (on A's side); cispo: the importance weight is
    # clipped (either sign of A); sapo: outside the trust region on A's side, which PPO would
    # clip and the soft gate only damps (a diagnostic).
    either = config.surrogate == "cispo"
    adv_full = adv.expand_as(ratio)
    clipped_high = ((adv_full > 0) | either) & (ratio > 1.0 + config.clip_high) & M
    clipped_low = ((adv_full < 0) | either) & (ratio < 1.0 - config.clip_low) & M
    has_loss_tokens = bool(M.any())
    valid_f = valid.to(delta.dtype)
    n_valid = int(valid.sum())
    return {
        "policy/clip_frac_low": _masked_mean(clipped_low.to(ratio.dtype), Mf),
        "policy/clip_frac_high": _masked_mean(clipped_high.to(ratio.dtype), Mf),
        "trace/ratio_mean": _masked_mean(ratio, Mf),
        "trace/ratio_min": float(ratio[M].min()) if has_loss_tokens else math.nan,
        "trace/ratio_max": float(ratio[M].max()) if has_loss_tokens else math.nan,
        "trace/abs_log_ratio_mean": _masked_mean(ell.abs(), Mf),
        # over valid tokens: which fraction the selection keeps
        "select/frac": float(selected.sum()) / n_valid if n_valid else math.nan,
        "select/entropy_threshold": tau,
        "policy/entropy_mean": (
            _masked_mean(entropy.detach().to(delta.dtype), valid_f)
            if entropy is not None
            else math.nan
        ),
        # over valid tokens, token ratio (not the trace): distance between the two policies
        "policy/approx_kl": _masked_mean(approx_kl_k3(delta), valid_f),
    }


def _check_selection(selected: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    if tuple(selected.shape) != tuple(valid.shape):
        raise ValueError(
            f"selected must have the shape of logprobs {tuple(valid.shape)}, "
            f"got {tuple(selected.shape)}"
        )
    selected = selected.to(valid.device).bool()
    if bool((selected & ~valid).any()):
        raise ValueError(
            "selected marks tokens outside response_mask: a selection must be a subset of "
            "the valid tokens (and them with the mask first)"
        )
    return selected


def _check_extras(
    logprobs: torch.Tensor,
    behaviour_weight: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    kl_coef: float,
) -> None:
    shape = tuple(logprobs.shape)
    for name, t in (("behaviour_weight", behaviour_weight), ("ref_logprobs", ref_logprobs)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(
                f"{name} must have the shape of logprobs {shape}, got {tuple(t.shape)}"
            )
    _check_coef("kl_coef", kl_coef, ref_logprobs, "ref_logprobs (the reference policy's log-probs)")


def _check_coef(name: str, coef: float, needed: torch.Tensor | None, needs: str) -> None:
    """A loss term's weight: a finite number >= 0; non-zero only with the tensor it weighs."""
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not 0.0 <= coef < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {coef!r}")
    if coef != 0.0 and needed is None:
        raise ValueError(f"{name} != 0 needs {needs}")


def _check_inputs(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor | None,
) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    shape = tuple(logprobs.shape)
    for name, t in (("old_logprobs", old_logprobs), ("response_mask", response_mask)):
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{name} must have the shape of logprobs {shape}, got {tuple(t.shape)}"
            )
    if entropy is not None and tuple(entropy.shape) != shape:
        raise ValueError(
            f"entropy must have the shape of logprobs {shape}, got {tuple(entropy.shape)}"
        )
    if tuple(advantages.shape) not in ((shape[0],), shape):
        raise ValueError(
            f"advantages must be [B] = ({shape[0]},) or [B, T] = {shape}, "
            f"got {tuple(advantages.shape)}"
        )
    if not logprobs.is_floating_point():
        raise ValueError(f"logprobs must be a floating tensor, got {logprobs.dtype}")
