"""Slow, obviously-correct references for the trace loss family (float64, tests only).

Written from the papers' formulas and `docs/ALGORITHMS.md` without reading
`strace_ds.losses`, so the tests compare two independent implementations:

* `ref_grpo_loss`   -- PPO/GRPO clipped surrogate on token ratios (Schulman et al. 2017;
  Shao et al. 2024), aggregated DAPO-style (`token_mean`), per sequence
  (`seq_mean_token_mean`) or Dr. GRPO-style (`seq_mean_token_sum_norm`).
* `ref_gspo_loss`   -- GSPO (Zheng et al. 2025): sequence ratio = geometric mean of the token
  ratios, clipped at the sequence level with (1 - eps_low, 1 + eps_high), mean over sequences.
* `ref_causal_trace` -- the causal trace recursion (z, n, ell) as a plain double loop.
* `ref_causal_trace_long` -- the same recursion looped over t but batched over rows (and
  several lam values at once), for T = 32k.
* `ref_trace_loss`  -- trace log-ratio -> clipped objective -> aggregation, composed from the
  pieces above (the whole contract, loop-based); optionally with per-token behaviour weights
  and a KL-to-reference term.
* `ref_gate` / `ref_past_log_weight` -- the token gate and the weight form's historical weight
  (docs/ALGORITHMS.md, "Trace forms"), one token at a time; `ref_trace_loss` takes every form.
* `ref_behaviour_weights` -- the behaviour correction (none / token / sequence / trace, cap by
  truncation or two-sided mask), one token at a time.
* `ref_kl` -- Schulman's k1 / k2 / k3 estimators of KL(pi || pi_ref), one token at a time.
* `ref_cispo_terms` -- CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4): per token
  -sg(clip(r, 1 - eps_low, 1 + eps_high)) * A * log pi, one token at a time.
* `ref_sapo_terms` -- SAPO (arXiv 2511.20347): per token -f(r) * A with the soft gate
  f(r) = 4/tau * sigmoid(tau * (r - 1)), tau = tau_pos if A > 0 else tau_neg, one token at a time.
* `ref_entropy_bonus` -- -coef * H on the loss tokens, aggregated like the loss.
"""

from __future__ import annotations

import math

import torch

AGGS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def harmonic(T: int) -> float:
    """H_T = 1 + 1/2 + ... + 1/T."""
    return sum(1.0 / k for k in range(1, T + 1))


def ref_causal_trace(delta: torch.Tensor, m: torch.Tensor, lam: float) -> torch.Tensor:
    """docs/ALGORITHMS.md recursion, one row and one token at a time (differentiable).

    z_t = lam**m_t z_{t-1} + m_t delta_t ; n_t = lam**m_t n_{t-1} + m_t ; ell_t = z_t / n_t.
    delta, m: [B, T]; returns ell [B, T].
    """
    B, T = delta.shape
    rows = []
    for i in range(B):
        zero = delta[i].sum() * 0.0  # attached to the graph (zero gradient)
        z, n, row = zero, 0.0, []
        for t in range(T):
            if bool(m[i, t]):  # the trace ticks: decay, then add this token
                z = lam * z + delta[i, t]
                n = lam * n + 1.0
            # unselected: lam**0 = 1, z and n carry over unchanged
            row.append(z / n if n > 0 else zero)
        rows.append(torch.stack(row) if row else delta.new_zeros(0))
    return torch.stack(rows) if rows else delta.new_zeros(0, T)


def ref_causal_trace_long(delta: torch.Tensor, m: torch.Tensor, lams: list[float]) -> torch.Tensor:
    """Same recursion, a Python loop over t, batched over rows and lam values.

    delta, m: [B, T]; returns ell [L, B, T] for L = len(lams). Forward only.
    """
    B, T = delta.shape
    lam = torch.tensor(lams, dtype=torch.float64)[:, None]  # [L, 1]
    z = torch.zeros(len(lams), B, dtype=torch.float64)  # [L, B]
    n = torch.zeros(len(lams), B, dtype=torch.float64)
    out = torch.empty(len(lams), B, T, dtype=torch.float64)
    one = torch.ones((), dtype=torch.float64)
    m_t = m.bool().T.contiguous()  # [T, B]
    dm_t = (delta.double() * m.double()).T.contiguous()
    mf_t = m.double().T.contiguous()
    for t in range(T):
        decay = torch.where(m_t[t], lam, one)  # lam**m_t
        z = decay * z + dm_t[t]
        n = decay * n + mf_t[t]
        out[:, :, t] = torch.where(n > 0, z / n.clamp_min(1e-300), 0.0)
    return out


def ref_sequence_trace(delta: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """window='sequence': ell_t = sum_k m_k delta_k / sum_k m_k for every t (0 if no m)."""
    B, T = delta.shape
    rows = []
    for i in range(B):
        sel = [delta[i, k] for k in range(T) if bool(m[i, k])]
        val = torch.stack(sel).sum() / len(sel) if sel else delta[i].sum() * 0.0
        rows.append(val.expand(T))
    return torch.stack(rows)


def clipped_token_loss(r, A, clip_low, clip_high):
    """L = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)   (PPO clipped surrogate)."""
    return -torch.minimum(r * A, torch.clamp(r, 1.0 - clip_low, 1.0 + clip_high) * A)


def ref_aggregate(L, M, agg, max_len=None, normalizer=None):
    """Aggregate per-token losses L [B, T] over loss tokens M [B, T] (bool)."""
    M = M.bool()
    LM = torch.where(M, L, torch.zeros_like(L))  # padding never enters, even if L is odd there
    B, T = L.shape
    if agg == "token_mean":
        denom = M.sum() if normalizer is None else normalizer
        return LM.sum() / denom
    if agg == "seq_mean_token_mean":
        per_seq = LM.sum(-1) / M.sum(-1).clamp_min(1)  # [B]
        denom = B if normalizer is None else normalizer
        return per_seq.sum() / denom
    if agg == "seq_mean_token_sum_norm":
        denom = B * (T if max_len is None else max_len) if normalizer is None else normalizer
        return LM.sum() / denom
    raise AssertionError(agg)


def _adv_bt(A, shape):
    A = A.double()
    return A[:, None].expand(shape) if A.dim() == 1 else A


def ref_grpo_loss(logp, old, A, mask, clip_low, clip_high, agg, max_len=None):
    """PPO/GRPO clip on token ratios r_t = exp(logp_t - old_t)."""
    r = torch.exp(logp - old)
    L = clipped_token_loss(r, _adv_bt(A, logp.shape), clip_low, clip_high)
    return ref_aggregate(L, mask, agg, max_len=max_len)


def ref_gspo_loss(logp, old, A, mask, clip_low, clip_high):
    """GSPO: s_i = exp(mean_{t valid} delta_t), L_i = -min(s_i A_i, clip(s_i) A_i), mean_i.

    A: [B] (one advantage per sequence, as in the paper). Rows without tokens contribute 0
    but still count in the mean over B (docs/ALGORITHMS.md: mean over sequences).
    """
    B, T = logp.shape
    terms = []
    for i in range(B):
        idx = [t for t in range(T) if bool(mask[i, t])]
        if not idx:  # zero, but still attached to the graph like the implementation's loss
            terms.append(logp[i].sum() * 0.0)
            continue
        log_s = sum(logp[i, t] - old[i, t] for t in idx) / len(idx)
        s = torch.exp(log_s)
        terms.append(-torch.minimum(s * A[i], torch.clamp(s, 1 - clip_low, 1 + clip_high) * A[i]))
    return torch.stack(terms).sum() / B


def ref_select(mask, entropy, q):
    """tau = quantile(H[valid], 1 - q); m = (H >= tau) & valid."""
    mask = mask.bool()
    if q is None:
        return mask, math.nan
    tau = torch.quantile(entropy[mask].double(), 1.0 - q)
    return (entropy >= tau) & mask, float(tau)


def ref_trace_loss(logp, old, A, mask, cfg, entropy=None, max_len=None, normalizer=None,
                   weight=None, ref=None, beta=0.0, estimator="k3"):
    """Whole contract from the loops: select -> trace -> clipped loss -> aggregate.

    ``weight`` [B, T] multiplies each clipped term; ``beta * ref_kl(logp, ref)`` is added to
    each term (unweighted); the denominators do not change.
    """
    mask = mask.bool()
    m, _ = ref_select(mask, entropy, cfg.entropy_top_quantile)
    delta = logp - old
    form = getattr(cfg, "form", "ratio")
    A_bt = _adv_bt(A, logp.shape)
    if form == "gate":
        delta = ref_gate(delta, A_bt, cfg.clip_low, cfg.clip_high)
    if form == "weight":
        ell = delta  # each token keeps its own ratio
    elif cfg.window == "causal":
        ell = ref_causal_trace(delta, m, cfg.lam)
    else:
        ell = ref_sequence_trace(delta, m)
    r = torch.exp(ell)  # the tests keep |ell| far below any clamp bound
    surrogate = getattr(cfg, "surrogate", "clip")
    if surrogate == "cispo":
        L = ref_cispo_terms(r, A_bt, logp, cfg.clip_low, cfg.clip_high)
    elif surrogate == "sapo":
        L = ref_sapo_terms(r, A_bt, cfg.sapo_tau_pos, cfg.sapo_tau_neg)
    else:
        L = clipped_token_loss(r, A_bt, cfg.clip_low, cfg.clip_high)
    if form == "weight":
        clock = m if cfg.weight_clock == "selected" else mask
        W = torch.exp(ref_past_log_weight(delta.detach(), m, cfg.lam, clock))
        L = L * W.clamp(cfg.weight_min, cfg.weight_max)
    if weight is not None:
        L = L * weight
    if ref is not None and beta != 0.0:
        L = L + beta * ref_kl(logp, ref, estimator, mask=mask)
    M = m if cfg.loss_on_selected_only else mask
    return ref_aggregate(L, M, cfg.loss_agg, max_len=max_len, normalizer=normalizer)


def ref_cispo_terms(r, A, logp, eps_low, eps_high):
    """CISPO, one token at a time: L_t = -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A_t logp_t.

    The clipped importance-sampling weight is a Python float (no graph at all), so only
    ``logp_t`` carries a gradient: d L_t / d logp_t = -clip(r_t) A_t. A: [B, T]."""
    B, T = r.shape
    rows = []
    for i in range(B):
        row = []
        for t in range(T):
            w = min(max(float(r[i, t].detach()), 1.0 - eps_low), 1.0 + eps_high)
            row.append(-w * float(A[i, t]) * logp[i, t])
        rows.append(torch.stack(row))
    return torch.stack(rows)


def ref_sapo_terms(r, A, tau_pos, tau_neg):
    """SAPO, one token at a time: L_t = -f(r_t) A_t, f(x) = 4/tau sigmoid(tau (x - 1)),
    tau = tau_pos when A_t > 0 else tau_neg (Gao et al., 2025). Differentiable in r. [B, T]."""
    B, T = r.shape
    rows = []
    for i in range(B):
        row = []
        for t in range(T):
            a = float(A[i, t])
            tau = tau_pos if a > 0 else tau_neg
            gate = 4.0 / tau / (1.0 + torch.exp(-tau * (r[i, t] - 1.0)))
            row.append(-gate * a)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def ref_entropy_bonus(H, M, coef, agg, max_len=None, normalizer=None):
    """The entropy bonus as a loss: aggregate over the loss tokens M of -coef * H_t (same
    aggregation and denominator as the policy loss). Differentiable in H."""
    B, T = H.shape
    terms = torch.stack([torch.stack([-coef * H[i, t] for t in range(T)]) for i in range(B)])
    return ref_aggregate(terms, M, agg, max_len=max_len, normalizer=normalizer)


def ref_gate(delta, A, clip_low, clip_high):
    """Token gate: delta_k keeps its gradient unless (A_k > 0 and rho_k > 1 + clip_high) or
    (A_k < 0 and rho_k < 1 - clip_low); then it enters as a constant. A: [B, T]."""
    B, T = delta.shape
    rows = []
    for i in range(B):
        row = []
        for k in range(T):
            rho, a = math.exp(float(delta[i, k].detach())), float(A[i, k])
            closed = (a > 0 and rho > 1.0 + clip_high) or (a < 0 and rho < 1.0 - clip_low)
            row.append(delta[i, k].detach() if closed else delta[i, k])
        rows.append(torch.stack(row))
    return torch.stack(rows)


def ref_past_log_weight(delta, m, lam, clock):
    """log W_t = sum_{k<t, m_k} lam**(1 + #clock in (k, t)) delta_k, one term at a time
    (lam**0 = 1 by Python's convention is never reached: the exponent is >= 1). [B, T]."""
    B, T = delta.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        for t in range(T):
            total = 0.0
            for k in range(t):
                if bool(m[i, k]):
                    between = sum(bool(clock[i, j]) for j in range(k + 1, t))
                    total += lam ** (1 + between) * float(delta[i, k])
            out[i, t] = total
    return out


def ref_past_log_weight_long(delta, m, lams, clock):
    """The same weight as a recursion looped over t, batched over rows and lam values:
    Z_t = lam**clock_t Z_{t-1} + m_t delta_t, log W_t = lam Z_{t-1}. [L, B, T], forward only."""
    B, T = delta.shape
    lam = torch.tensor(lams, dtype=torch.float64)[:, None]
    z = torch.zeros(len(lams), B, dtype=torch.float64)
    out = torch.empty(len(lams), B, T, dtype=torch.float64)
    one = torch.ones((), dtype=torch.float64)
    tick = clock.bool().T.contiguous()
    dm = (delta.double() * m.double()).T.contiguous()
    for t in range(T):
        out[:, :, t] = lam * z
        z = torch.where(tick[t], lam, one) * z + dm[t]
    return out


def ref_kl(logp, ref, estimator, mask=None):
    """Per token, x = log pi_ref - log pi on a token drawn from pi (Schulman 2020):
    k1 = -x, k2 = x**2 / 2, k3 = e**x - 1 - x. Differentiable in logp; [B, T]; 0 (never
    computed) outside ``mask``."""
    B, T = logp.shape
    rows = []
    for i in range(B):
        row = []
        for t in range(T):
            if mask is not None and not bool(mask[i, t]):
                row.append(logp.new_zeros(()))
                continue
            x = ref[i, t] - logp[i, t]
            if estimator == "k1":
                row.append(-x)
            elif estimator == "k2":
                row.append(0.5 * x * x)
            elif estimator == "k3":
                row.append(torch.exp(x) - 1.0 - x)
            else:
                raise AssertionError(estimator)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def ref_behaviour_weights(prox, behav, mask, correction, cap, mode, lam=0.0, m=None):
    """Behaviour weights from the loops; [B, T] float64, 1 outside mask.

    d_t = prox_t - behav_t on valid tokens. token: exp(d_t); sequence: exp(mean of the row's
    d); trace: exp(ell_t) with ell the causal trace recursion of d over the selection m (all
    valid tokens when m is None). truncate: min(w, cap); mask: w if 1/cap <= w <= cap else 0.
    """
    mask = mask.bool()
    m = mask if m is None else m.bool()
    B, T = prox.shape
    d = torch.where(mask, prox.double() - behav.double(), torch.zeros(B, T, dtype=torch.float64))
    ell = ref_causal_trace(d, m, lam) if correction == "trace" else None
    w = torch.ones(B, T, dtype=torch.float64)
    for i in range(B):
        idx = [t for t in range(T) if bool(mask[i, t])]
        for t in idx:
            if correction == "none":
                continue
            if correction == "token":
                v = math.exp(float(d[i, t]))
            elif correction == "sequence":
                v = math.exp(sum(float(d[i, k]) for k in idx) / len(idx))
            else:
                v = math.exp(float(ell[i, t]))
            if mode == "truncate":
                v = min(v, cap)
            elif not 1.0 / cap <= v <= cap:
                v = 0.0
            w[i, t] = v
    return w

def make_batch(B, T, seed, scale=0.3, holes=False, adv_per_token=False, min_len=1):
    """A random float64 batch with right padding (and optional holes).

    Returns dict(logp [B, T] leaf requiring grad, old [B, T], A [B] or [B, T],
    mask bool [B, T], entropy [B, T]). Padded positions hold garbage (large deltas and
    entropies) so any leak of padding into the loss, the trace or the metrics shows up.
    """
    g = torch.Generator().manual_seed(seed)
    old = -3.0 * torch.rand(B, T, generator=g, dtype=torch.float64)
    delta = scale * torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(min(min_len, T), T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    if holes:
        mask &= torch.rand(B, T, generator=g) > 0.25
    entropy = 2.0 * torch.rand(B, T, generator=g, dtype=torch.float64)
    # garbage at padding: must never matter
    delta = torch.where(mask, delta, torch.full_like(delta, 4.0))
    entropy = torch.where(mask, entropy, torch.full_like(entropy, 50.0))
    if adv_per_token:
        A = torch.randn(B, T, generator=g, dtype=torch.float64)
    else:
        A = torch.randn(B, generator=g, dtype=torch.float64)
    logp = (old + delta).detach().requires_grad_(True)
    return dict(logp=logp, old=old, A=A, mask=mask, entropy=entropy)
