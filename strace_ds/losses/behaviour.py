"""The behaviour correction: detached importance weights from the sampler to the proximal policy.

Three policies (``docs/ALGORITHMS.md``, "Three policies and the behaviour correction"):

* behaviour ``pi_b``: the rollout engine that sampled the answers (its log-probs
  ``logp_behav``), possibly some policy versions old and numerically different (another kernel,
  another precision);
* proximal ``pi_p``: the trainer's recomputation at the start of the step (``logp_prox``, the
  ``old_logprobs`` of :func:`policy_loss`): the clip's anchor, the ratio's denominator;
* current ``pi_theta``: the policy being updated.

``policy_loss`` corrects ``pi_p -> pi_theta`` with its (trace) ratio and clip; this module
gives the weight ``w_t`` for the remaining gap ``pi_b -> pi_p``, from the behaviour log-ratio
``d_t = logp_prox_t - logp_behav_t``. The corrections differ only in which trace of ``d`` they
take, so all three go through :func:`strace_ds.losses.trace.trace_log_ratio` (one code path,
the corrections are data in ``_TRACES``).
"""

from __future__ import annotations

import math

import torch

from strace_ds.losses.config import LOG_RATIO_CLAMP, WINDOWS
from strace_ds.losses.kl import approx_kl_k3
from strace_ds.losses.trace import trace_log_ratio

BEHAVIOUR_CORRECTIONS = ("none", "token", "sequence", "trace")
BEHAVIOUR_MODES = ("truncate", "mask")

BEHAVIOUR_CAP = 2.0
"""Default cap ``C`` on the behaviour weight: slime's ``--tis-clip`` default and verl's
documented ``rollout_is_threshold`` example (truncated importance sampling, Yao et al. 2025,
"Your efficient RL framework secretly brings you off-policy RL training")."""

BEHAVIOUR_METRIC_NAMES = (
    "behaviour/weight_mean",
    "behaviour/weight_max",
    "behaviour/clipped_frac",
    "behaviour/kl",
)
"""Keys of the metrics :func:`behaviour_weights` returns (``docs/ALGORITHMS.md``)."""

# correction -> (selection, lam, window) of the trace of d it takes; None = the run's own.
_TRACES: dict[str, tuple[str, float | None, str | None]] = {
    "token": ("valid", 0.0, "causal"),  # w_t = exp(d_t)
    "sequence": ("valid", None, "sequence"),  # w_t = exp(mean over the row of d)
    "trace": ("selected", None, None),  # the loss's own trace, applied to d
}


def behaviour_weights(
    logp_prox: torch.Tensor,
    logp_behav: torch.Tensor,
    mask: torch.Tensor,
    correction: str,
    cap: float = BEHAVIOUR_CAP,
    mode: str = "truncate",
    lam: float = 0.0,
    selected: torch.Tensor | None = None,
    window: str = "causal",
    loss_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Detached weights ``w [B, T]`` that multiply each token's loss term, and their metrics.

    With ``d_t = clamp(logp_prox_t - logp_behav_t, -20, 20)`` on the valid tokens ``mask``
    (0 elsewhere) and ``ell = trace_log_ratio(d, ., ., .)``::

        none:      w_t = 1
        token:     w_t = exp(d_t)                                    (per-token IS)
        sequence:  w_t = exp(sum_k mask_k d_k / sum_k mask_k)        (geometric mean per row)
        trace:     w_t = exp(ell_t),  ell = trace_log_ratio(d, m, lam, window)

    ``trace`` is the loss's own trace (the run's ``lam``, ``window`` and selection ``m``;
    ``m = mask`` when ``selected`` is None): the normalised, decayed average of the behaviour
    log-ratios of the prefix, i.e. the trace's estimate of a stale prefix's historical weight.
    ``lam = 0`` without selection is ``token``; ``window="sequence"`` without selection is
    ``sequence``. Then the cap ``C``::

        truncate:  w = min(w, C)                                    (TIS)
        mask:      w = w * [1/C <= w <= C]                          (MIS / IcePop, two-sided)

    ``mask`` zeroes tokens (whole rows for ``sequence``) whose weight leaves ``[1/C, C]``; the
    zeroed tokens stay in the loss normaliser. Positions outside ``mask`` get ``w = 1``.

    Metrics (``BEHAVIOUR_METRIC_NAMES``; NaN when there are no tokens): over ``loss_mask``
    (default ``mask``) the mean applied weight, the largest uncapped weight and the share of
    tokens the cap changed; over ``mask`` the k3 estimate of ``KL(pi_b || pi_p)``,
    ``exp(d) - 1 - d`` (unbiased on tokens sampled from ``pi_b``).

    Args:
        logp_prox: ``[B, T]`` proximal log-probs (the trainer's scoring pass); detached inside.
        logp_behav: ``[B, T]`` behaviour log-probs (the rollout engine's); detached inside.
        mask: ``[B, T]`` bool or 0/1, the valid answer tokens.
        correction: one of ``BEHAVIOUR_CORRECTIONS``.
        cap: ``C >= 1`` (``math.inf`` for no cap).
        mode: one of ``BEHAVIOUR_MODES``.
        lam, window: the run's trace decay and window (``trace`` only).
        selected: ``[B, T]`` bool, the step's selection ``m`` inside ``mask`` (``trace`` only).
        loss_mask: ``[B, T]`` the loss tokens ``M`` for the weight metrics (default ``mask``).

    Returns:
        ``(w, metrics)``: ``w`` detached, float64 for float64 input and float32 otherwise.
    """
    _check_options(correction, cap, mode, window)
    shape = tuple(logp_prox.shape)
    named = (("logp_behav", logp_behav), ("mask", mask), ("selected", selected),
             ("loss_mask", loss_mask))  # fmt: skip
    for name, t in named:
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(
                f"{name} must have the shape of logp_prox {shape}, got {tuple(t.shape)}"
            )
    work = torch.float64 if logp_prox.dtype == torch.float64 else torch.float32
    valid = mask.bool()
    diff = logp_prox.detach().to(work) - logp_behav.detach().to(work)
    # The clamp keeps a -inf behaviour log-prob from producing inf - inf = NaN in the trace.
    d = torch.where(valid, diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP), torch.zeros_like(diff))
    if correction == "none":
        raw = torch.ones_like(d)
    else:
        raw = torch.exp(_log_weight(d, valid, correction, lam, selected, window))
        raw = torch.where(valid, raw, torch.ones_like(raw))
    if correction == "none" or cap == math.inf:
        capped = torch.zeros_like(valid)
        weight = raw
    elif mode == "truncate":
        capped = raw > cap
        weight = raw.clamp(max=cap)
    else:
        capped = (raw > cap) | (raw < 1.0 / cap)
        weight = torch.where(capped, torch.zeros_like(raw), raw)
    capped = capped & valid
    M = valid if loss_mask is None else loss_mask.bool()
    n_loss, n_valid = int(M.sum()), int(valid.sum())
    metrics = {
        "behaviour/weight_mean": float(weight[M].sum()) / n_loss if n_loss else math.nan,
        "behaviour/weight_max": float(raw[M].max()) if n_loss else math.nan,
        "behaviour/clipped_frac": float((capped & M).sum()) / n_loss if n_loss else math.nan,
        "behaviour/kl": float(approx_kl_k3(d)[valid].sum()) / n_valid if n_valid else math.nan,
    }
    return weight.detach(), metrics


def _log_weight(
    d: torch.Tensor,
    valid: torch.Tensor,
    correction: str,
    lam: float,
    selected: torch.Tensor | None,
    window: str,
) -> torch.Tensor:
    """``log w [B, T]`` of a correction: the trace of ``d`` that ``_TRACES`` names."""
    which, trace_lam, trace_window = _TRACES[correction]
    m = valid
    if which == "selected" and selected is not None:
        m = selected.to(valid.device).bool()
        if bool((m & ~valid).any()):
            raise ValueError("selected marks tokens outside mask: a selection must lie inside it")
    return trace_log_ratio(
        d,
        m,
        lam if trace_lam is None else trace_lam,
        window if trace_window is None else trace_window,
    )


def _check_options(correction: str, cap: float, mode: str, window: str) -> None:
    if correction not in BEHAVIOUR_CORRECTIONS:
        raise ValueError(
            f"unknown behaviour correction {correction!r}; choose one of "
            f"{', '.join(BEHAVIOUR_CORRECTIONS)}"
        )
    if mode not in BEHAVIOUR_MODES:
        raise ValueError(
            f"unknown behaviour mode {mode!r}; choose one of {', '.join(BEHAVIOUR_MODES)}"
        )
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap >= 1.0:
        raise ValueError(f"behaviour cap must be a number >= 1 (math.inf for none), got {cap!r}")
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}; got {window!r}")
