"""Token selection and the trace log-ratio: the two pieces that make a trace a trace.

Notation (``docs/ALGORITHMS.md``): ``delta[i, t] = logp_theta(y_t) - logp_old(y_t)`` for answer i,
``m[i, t]`` the selected tokens. This is the project's formalisation of P-trace/S-trace from
the paper's abstract, not the paper's own text.
"""

from __future__ import annotations

import math

import torch

# Largest natural-log dynamic range used inside one chunk of the causal scan. Within a chunk
# the scan divides by lam**c with c <= chunk length; exp(300) ~ 2e130 leaves float64 (max
# ~1.8e308) room for the cumulative sum of a whole chunk, exp(60) ~ 1e26 does the same for
# float32 (max ~3.4e38).
_MAX_LOG_RANGE = {torch.float64: 300.0, torch.float32: 60.0}


def select_tokens(
    response_mask: torch.Tensor,
    entropy: torch.Tensor | None,
    entropy_top_quantile: float | None,
    threshold: float | None = None,
) -> tuple[torch.Tensor, float]:
    """The S-trace selection ``m``: the top-``q`` entropy tokens among the valid ones.

    ``tau = quantile(H[response_mask], 1 - q)`` (linear interpolation, as ``torch.quantile``)
    over every valid token of the tensors passed in, and ``m = (H >= tau) & response_mask``.
    Without a quantile every valid token is selected and ``tau`` is NaN.

    A trainer that splits an update into micro-batches or ranks must not let each piece take
    its own quantile (the split would change the gradient): it computes ``tau`` once with
    :func:`entropy_threshold` over all the pieces' valid entropies and passes it as
    ``threshold`` (``docs/ALGORITHMS.md``, "Selection").

    Args:
        response_mask: ``[B, T]`` bool (or 0/1), the valid answer tokens.
        entropy: ``[B, T]`` token entropies (detached), or None.
        entropy_top_quantile: ``q`` in (0, 1], or None for no selection.
        threshold: a precomputed ``tau`` to compare against instead of the local quantile.

    Returns:
        ``(m [B, T] bool, tau)``.
    """
    valid = response_mask.bool()
    if entropy_top_quantile is None:
        return valid, float("nan")
    if entropy is None:
        raise ValueError(
            "entropy is required when entropy_top_quantile is set (S-trace / highent_grpo): "
            "pass the token entropies of the current policy, e.g. from "
            "strace_ds.model.logprob_kernels.token_logprobs_and_entropy"
        )
    if entropy.shape != valid.shape:
        raise ValueError(
            f"entropy must have the shape of response_mask {tuple(valid.shape)}, "
            f"got {tuple(entropy.shape)}"
        )
    if not 0.0 < entropy_top_quantile <= 1.0:
        raise ValueError(f"entropy_top_quantile must be in (0, 1], got {entropy_top_quantile}")
    if threshold is None:
        values = entropy.detach()[valid]
        if values.numel() == 0:
            return valid, float("nan")
        threshold = entropy_threshold(values, entropy_top_quantile)
    # tau is computed in the entropies' dtype, so comparing in that dtype is exact.
    selected = (entropy.detach() >= threshold) & valid
    return selected, threshold


def entropy_threshold(values: torch.Tensor, entropy_top_quantile: float) -> float:
    """``tau = quantile(values, 1 - q)`` (linear interpolation) of a flat tensor of entropies.

    The tokens with ``H >= tau`` are the top ``q`` of ``values``. NaN when ``values`` is empty.
    """
    if not 0.0 < entropy_top_quantile <= 1.0:
        raise ValueError(f"entropy_top_quantile must be in (0, 1], got {entropy_top_quantile}")
    if values.numel() == 0:
        return float("nan")
    return _quantile_linear(values.detach().flatten(), 1.0 - entropy_top_quantile)


def _quantile_linear(values: torch.Tensor, p: float) -> float:
    """``torch.quantile(values, p)`` (linear interpolation) from two order statistics.

    ``kthvalue`` is a selection, not a sort: several times faster than ``torch.quantile`` on
    the ~1e5-1e6 valid tokens of a batch, and it has no 2**24 input limit.
    """
    n = values.numel()
    pos = p * (n - 1)
    lo = math.floor(pos)
    frac = pos - lo
    low = values.kthvalue(lo + 1).values
    if frac == 0.0 or lo + 1 >= n:
        return float(low)
    high = values.kthvalue(lo + 2).values
    return float(low + frac * (high - low))  # in the values' dtype, like torch.quantile


def trace_log_ratio(
    delta: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    window: str = "causal",
) -> torch.Tensor:
    """The trace log-ratio ``ell [B, T]`` of each token.

    ``window="causal"`` (P-trace, S-trace; GRPO at ``lam = 0``), left to right per row::

        z_t = lam**m_t * z_{t-1} + m_t * delta_t          (z_0 = 0)
        n_t = lam**m_t * n_{t-1} + m_t                    (n_0 = 0)
        ell_t = z_t / n_t  if n_t > 0 else 0

    i.e. ``ell_t = sum_{k<=t, m_k} lam**(c_t - c_k) delta_k / sum_{k<=t, m_k} lam**(c_t - c_k)``
    with ``c_t`` the number of selected tokens up to t: a normalised, exponentially weighted
    average of the selected log-ratios so far. The trace only ticks on selected tokens and
    carries over unchanged across unselected ones. ``lam = 0`` gives the last selected
    token's ``delta``; ``lam = 1`` the running mean of the selected ``delta``.

    ``window="sequence"`` (GSPO): ``ell_t = sum_k m_k delta_k / sum_k m_k`` for every t.

    Gradients flow through every ``delta_k`` inside ``ell_t``. The causal scan is vectorised
    (no Python loop over tokens): within chunks it uses the closed form above, rebased at
    each chunk start so ``lam**(-c)`` stays inside the dtype's range, and carries ``z`` from
    chunk to chunk; ``n_t = (1 - lam**c_t) / (1 - lam)`` in closed form. The arithmetic runs
    in float64 for float64 input and in float32 otherwise; the result has ``delta``'s dtype.

    Args:
        delta: ``[B, T]`` log-ratios ``logp_theta - logp_old``.
        mask: ``[B, T]`` bool selection ``m`` (padding must be False).
        lam: decay in [0, 1].
        window: ``"causal"`` or ``"sequence"``.
    """
    _check_trace_args(delta, mask, lam)
    m = mask.bool()
    if window == "sequence":
        return _sequence_log_ratio(delta, m)
    if window != "causal":
        raise ValueError(f"window must be 'causal' or 'sequence', got {window!r}")
    work = torch.float64 if delta.dtype == torch.float64 else torch.float32
    if lam == 0.0 or -math.log(lam) > _MAX_LOG_RANGE[work]:
        # lam < exp(-R): older tokens weigh below the dtype's precision, so the trace is the
        # lam = 0 one to working accuracy (and lam**-1 would overflow in the scan).
        return _last_selected_log_ratio(delta, m)
    return _CausalTrace.apply(delta, m, lam)


def past_log_weight(
    delta: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    clock: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weight form's log historical weight ``log W [B, T]`` (detached), per row::

        Z_t     = sum_{k<=t, m_k} lam**(c_t - c_k) delta_k      c = cumsum(clock)
        log W_t = lam * Z_{t-1}                                 (log W_1 = 0)

    i.e. ``log W_t = sum_{k<t, m_k} lam**(1 + c_{t-1} - c_k) delta_k``: an unnormalised,
    decayed sum of the log-ratios of the selected tokens strictly before ``t`` (a decayed
    product of their ratios). ``clock = mask`` (the default) counts the decay in selected
    tokens; ``clock = response_mask`` counts it in answer positions, ``lam**(t - k)``.
    ``lam = 0`` gives ``log W = 0`` (every past token decays away: GRPO); ``lam = 1`` with
    every token selected gives ``sum_{k<t} delta_k``, the exact per-decision historical weight
    ``prod_{k<t} rho_k`` that PPO drops. Same chunked scan as the trace
    (:func:`_decayed_cumsum`); float64 for float64 input, float32 otherwise.

    Args:
        delta: ``[B, T]`` log-ratios (detached inside; padding must be 0).
        mask: ``[B, T]`` bool selection ``m`` (padding False).
        lam: decay in [0, 1].
        clock: ``[B, T]`` bool, the tokens on which the decay ticks (default ``mask``).
    """
    _check_trace_args(delta, mask, lam)
    work = torch.float64 if delta.dtype == torch.float64 else torch.float32
    out = torch.zeros(delta.shape, dtype=work, device=delta.device)
    if lam == 0.0 or -math.log(lam) > _MAX_LOG_RANGE[work] or delta.shape[-1] < 2:
        # lam < exp(-R): lam * Z is below the dtype's precision, W = 1 to working accuracy.
        return out
    m = mask.bool()
    ticks = m if clock is None else clock.bool()
    with torch.no_grad():
        values = torch.where(m, delta.detach().to(work), torch.zeros_like(out))
        z = _decayed_cumsum(values, ticks.to(work).cumsum(dim=-1), lam)
        out[:, 1:] = lam * z[:, :-1]
    return out


class _CausalTrace(torch.autograd.Function):
    """The causal trace with a hand-written backward: one reverse scan.

    ``ell_t = z_t / n_t`` with ``z_t = sum_{k<=t} lam**(c_t - c_k) m_k delta_k`` is linear in
    ``delta``, so ``d ell_t / d delta_k = m_k lam**(c_t - c_k) / n_t`` for ``k <= t`` and

        grad_k = m_k * S_k,   S_k = sum_{t>=k} lam**(c_t - c_k) g_t / n_t,

    the same decayed scan run right to left (``S_k = g_k/n_k + lam**m_{k+1} S_{k+1}``). This
    costs one scan instead of autograd's replay of every elementwise step of the forward.
    """

    @staticmethod
    def forward(ctx, delta: torch.Tensor, m: torch.Tensor, lam: float) -> torch.Tensor:
        work = torch.float64 if delta.dtype == torch.float64 else torch.float32
        mf = m.to(work)
        count = mf.cumsum(dim=-1)  # c_t, selected tokens up to t   [B, T]
        numerator = _decayed_cumsum(delta.to(work) * mf, count, lam)  # z_t   [B, T]
        if lam == 1.0:
            denominator = count.clone()
        else:
            # n_t = sum_{j < c_t} lam**j = (1 - lam**c_t) / (1 - lam), in closed form.
            log_lam = math.log(lam)
            denominator = torch.expm1(count * log_lam) / math.expm1(log_lam)
        # Before the first selected token z_t = 0 and n_t = 0: ell_t = 0 (divide by 1).
        denominator.masked_fill_(count == 0, 1.0)
        ctx.save_for_backward(mf, denominator)
        ctx.lam = lam
        ctx.in_dtype = delta.dtype
        return (numerator / denominator).to(delta.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        mf, denominator = ctx.saved_tensors
        u = (grad.to(mf.dtype) / denominator).flip(-1)  # g_t / n_t, right to left
        ticks = torch.zeros_like(mf)
        ticks[:, 1:] = mf.flip(-1)[:, :-1]  # step j of the reversed scan decays by m_{k+1}
        reversed_sums = _decayed_cumsum(u, ticks.cumsum(dim=-1), ctx.lam)
        return (mf * reversed_sums.flip(-1)).to(ctx.in_dtype), None, None


def _check_trace_args(delta: torch.Tensor, mask: torch.Tensor, lam: float) -> None:
    if delta.dim() != 2 or mask.shape != delta.shape:
        raise ValueError(
            f"delta and mask must both be [B, T] of the same shape, got "
            f"{tuple(delta.shape)} and {tuple(mask.shape)}"
        )
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")


def _sequence_log_ratio(delta: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """GSPO's length-normalised sequence log-ratio, broadcast to every token. ``[B, T]``."""
    mf = m.to(delta.dtype)
    count = mf.sum(dim=-1, keepdim=True)  # [B, 1]
    mean = (delta * mf).sum(dim=-1, keepdim=True) / count.clamp_min(1.0)
    return mean.expand_as(delta)


def _last_selected_log_ratio(delta: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``lam = 0``: ``ell_t = delta_k`` for the last selected ``k <= t`` (0 before any)."""
    T = delta.shape[-1]
    positions = torch.arange(T, device=delta.device).expand_as(delta)
    last = torch.where(m, positions, torch.full_like(positions, -1)).cummax(dim=-1).values
    picked = delta.gather(-1, last.clamp_min(0))
    return torch.where(last >= 0, picked, torch.zeros_like(picked))


def _decayed_cumsum(values: torch.Tensor, count: torch.Tensor, lam: float) -> torch.Tensor:
    """Solve ``s_t = lam**m_t * s_{t-1} + values_t`` (``s_0 = 0``) for ``0 < lam <= 1``.

    Closed form: ``s_t = sum_{k<=t} lam**(c_t - c_k) values_k`` with ``c = cumsum(m)`` given
    as ``count``. Within a chunk of ``C`` tokens the exponents are counted from the chunk
    start, so ``lam**(-c) <= lam**(-C) <= exp(R)`` with ``R`` chosen from the dtype's range;
    the chunk-to-chunk carry is a short loop over chunks (``T / C`` steps; one chunk when
    ``lam = 1``).

    Args:
        values: ``[B, T]`` float32 or float64.
        count: ``[B, T]`` the running count of selected tokens, same dtype.
    """
    B, T = values.shape
    if lam == 1.0 or T == 0:
        return values.cumsum(dim=-1)
    log_lam = math.log(lam)
    max_range = _MAX_LOG_RANGE[values.dtype]
    chunk = max(1, min(T, int(max_range / -log_lam)))
    n_chunks = -(-T // chunk)
    pad = n_chunks * chunk - T
    if pad:
        values = torch.nn.functional.pad(values, (0, pad))
        count = torch.cat([count, count[:, -1:].expand(B, pad)], dim=1)
    v = values.view(B, n_chunks, chunk)
    c = count.view(B, n_chunks, chunk)
    start = torch.cat([torch.zeros_like(c[:, :1, :1]), c[:, :-1, -1:]], dim=1)  # [B, nC, 1]
    decay = torch.exp((c - start) * log_lam)  # lam**c_t from the chunk start, in (0, 1]
    local = decay * torch.cumsum(v / decay, dim=-1)  # the scan restarted at each chunk
    if n_chunks > 1:
        chunk_decay = decay[..., -1]  # [B, nC] lam**(selected tokens in chunk j)
        chunk_end = local[..., -1]  # [B, nC]
        carry = torch.zeros(B, dtype=values.dtype, device=values.device)
        carries = [carry]
        for j in range(n_chunks - 1):
            carry = chunk_decay[:, j] * carry + chunk_end[:, j]
            carries.append(carry)
        incoming = torch.stack(carries, dim=1)  # [B, nC] state entering chunk j
        local = local + decay * incoming.unsqueeze(-1)
    return local.reshape(B, n_chunks * chunk)[:, :T]
