# %% [markdown]
# # 01 — From the exact off-policy gradient to the P-trace
#
# **What this notebook is.** The paper *Beyond Uniform Credit Assignment: Selective Eligibility
# Traces for RLVR* (Mou, Zhuang, Chen, Zhang, 2026) is public only through its abstract. The
# P-trace and S-trace formulas used here are **this project's formalisation of that abstract**
# (`docs/ALGORITHMS.md`), not the paper's text. Every loss below comes from
# `strace_ds.losses`; the notebook only adds a tiny sequence MDP whose exact gradient can be
# enumerated, so that we can *measure* what each estimator does.
#
# The trace here is in its **ratio form** (`form="ratio"`, the form the presets first shipped
# with); the `p_trace`/`s_trace` presets now use the weight form, chosen by the credit study
# (`docs/ALGORITHMS.md`, "Trace forms"; section 5e of notebook 01 compares the forms).
#
# Plan:
# 1. the exact off-policy policy gradient and the historical importance weight PPO/GRPO drop;
# 2. why the full product of ratios is unusable on long answers (its variance grows
#    exponentially with length);
# 3. the trace log-ratio, with GRPO at $\lambda = 0$ and a GSPO-like average at $\lambda = 1$;
# 4. numerics on an enumerable MDP: bias, variance and cosine similarity to the true gradient
#    for GRPO, P-trace over $\lambda$, GSPO and the full importance product, as the learner
#    drifts away from the policy that sampled the answers.

# %% [markdown]
# ## 1. The exact off-policy gradient
#
# A prompt $x$, an answer $y = (y_1, \dots, y_T)$ sampled token by token from a policy, a
# verifiable reward $R(y)$ paid at the end. The objective and its gradient under the current
# policy $\pi_\theta$ are
#
# $$J(\theta) = \mathbb{E}_{y \sim \pi_\theta}[R(y)], \qquad
#   \nabla J(\theta) = \mathbb{E}_{y \sim \pi_\theta}\Big[R(y) \sum_{t=1}^{T}
#   \nabla \log \pi_\theta(y_t \mid x, y_{<t})\Big].$$
#
# In RLVR the answers come from $\pi_{\text{old}}$ (the sampler's weights, a few optimizer steps
# behind). With the token ratio $\rho_k = \pi_\theta(y_k \mid y_{<k}) / \pi_{\text{old}}(y_k \mid y_{<k})$
# and $\delta_k = \log \rho_k$, importance sampling of the whole answer gives the weight
# $\prod_{k=1}^{T} \rho_k$. By causality the gradient of token $t$ only needs the ratios up to
# $t$ once the future is summarised by the value of the *current* policy:
#
# $$\nabla J(\theta) = \sum_{t=1}^{T} \mathbb{E}_{y \sim \pi_{\text{old}}}\Big[
#   \underbrace{\textstyle\prod_{k<t} \rho_k}_{W_t\ \text{(historical weight)}}\;
#   \rho_t\; Q^{\pi_\theta}(y_{\le t})\; \nabla \log \pi_\theta(y_t \mid y_{<t})\Big].$$
#
# **PPO and GRPO set $W_t = 1$** and replace $Q$ by a group-relative advantage $A$ computed
# from the old samples. Their surrogate is $\sum_t \rho_t A$ with gradient
# $\rho_t A \nabla \log \pi_\theta(y_t)$: exact at $\theta = \theta_{\text{old}}$ (all ratios
# are 1), biased as soon as the learner moves, because the prefix $y_{<t}$ was drawn from the
# old policy's state distribution and nothing reweights it.

# %% [markdown]
# ## 2. Why not keep the full product?
#
# Because its variance explodes with length. If the token ratios of different positions were
# independent with $\mathbb{E}_{\text{old}}[\rho_k] = 1$ and
# $\mathbb{E}_{\text{old}}[\rho_k^2] = 1 + \chi^2_k$ ($\chi^2$ is the chi-square divergence
# between the two token distributions), then
#
# $$\operatorname{Var}_{\text{old}}\Big[\prod_{k \le t} \rho_k\Big]
#   = \prod_{k \le t} (1 + \chi^2_k) - 1 \;\approx\; e^{t\,\bar\chi^2} - 1,$$
#
# exponential in $t$. A per-token $\chi^2$ of $10^{-3}$ is harmless for 10 tokens and means a
# variance of $e^{8} \approx 3000$ at 8,000 tokens — the length of a reasoning answer. That is
# why GRPO drops $W_t$ and why GSPO takes a *length-normalised* (geometric-mean) ratio.

# %% [markdown]
# ## 3. The trace log-ratio (P-trace)
#
# Instead of the product, the P-trace keeps an exponentially decaying, **normalised** average of
# the log-ratios seen so far (`strace_ds.losses.trace_log_ratio`, `window="causal"`):
#
# $$z_t = \lambda z_{t-1} + \delta_t, \qquad n_t = \lambda n_{t-1} + 1, \qquad
#   \ell_t = \frac{z_t}{n_t} = \frac{\sum_{k \le t} \lambda^{t-k} \delta_k}{\sum_{k \le t} \lambda^{t-k}},
#   \qquad r_t = e^{\ell_t}.$$
#
# * $\lambda = 0$: $\ell_t = \delta_t$, $r_t = \rho_t$ — **PPO/GRPO is the $\lambda = 0$ member**.
# * $\lambda = 1$: $\ell_t = \frac1t \sum_{k \le t} \delta_k$, i.e.
#   $r_t = (W_t \rho_t)^{1/t}$ — the historical weight *with its logarithm divided by its
#   length*: its direction is kept, its variance is that of an average.
# * In between, recent tokens dominate the trace.
#
# The loss is PPO's clipped objective on the trace ratio, token by token:
#
# $$L_t = -\min\big(r_t A,\ \operatorname{clip}(r_t, 1 - \epsilon_{\text{low}}, 1 + \epsilon_{\text{high}})\, A\big),$$
#
# so the trust region is enforced per token on $r_t$ ("partial trust-region preservation":
# only the tokens whose trace leaves the region are cut). Gradients flow through every
# $\delta_k$ inside $\ell_t$: token $k$ receives credit from every later $t$,
# $\partial L_t / \partial \delta_k = -r_t A\, w_{t,k}$ with $w_{t,k} = \lambda^{t-k} / n_t$.
#
# Be clear about what this is: $r_t$ is a (weighted) **geometric mean** of ratios, not their
# product, so it is *not* an unbiased importance weight. Whether it helps is an empirical
# question — which the rest of this notebook measures.

# %%
import itertools
import json
import math
import time

import matplotlib.pyplot as plt
import torch

from strace_ds.losses.advantages import group_advantages
from strace_ds.losses import TraceConfig, policy_loss, trace_log_ratio

torch.set_default_dtype(torch.float64)  # exact enumeration: float64 everywhere
NOTEBOOK_START = time.perf_counter()

# %% [markdown]
# A quick look at the trace itself, straight from the library: on a random row of
# log-ratios, $\lambda = 0$ returns $\delta$ unchanged and $\lambda = 1$ the running mean.

# %%
delta = 0.3 * torch.randn(1, 12, generator=torch.Generator().manual_seed(0))  # [B=1, T=12]
mask = torch.ones_like(delta, dtype=torch.bool)
running_mean = delta.cumsum(-1) / torch.arange(1, 13)
print("lam=0 == delta        :", torch.equal(trace_log_ratio(delta, mask, 0.0), delta))
print("lam=1 == running mean :", torch.allclose(trace_log_ratio(delta, mask, 1.0), running_mean))

fig, ax = plt.subplots(figsize=(8, 3))
ax.plot(delta[0], "o-", color="grey", label=r"token log-ratio $\delta_t$ (GRPO, $\lambda=0$)")
for lam in (0.5, 0.9, 1.0):
    ax.plot(trace_log_ratio(delta, mask, lam)[0], "o-", label=rf"trace $\ell_t$, $\lambda={lam}$")
ax.plot(torch.cumsum(delta[0], 0), "k--", label=r"log of the full product, $\sum_{k\leq t}\delta_k$")
ax.axhline(0, color="k", lw=0.5)
ax.set_xlabel("token t")
ax.set_ylabel("log-ratio")
ax.legend(fontsize=7, loc="lower left")
ax.set_title("The trace is a normalised, decaying average; the product's log is a random walk")
plt.show()

# %% [markdown]
# ## 4. Variance against length, computed exactly
#
# A policy over a vocabulary of 3 tokens with independent positions, and an old policy whose
# logits differ by a fixed random perturbation at every position. For lengths $T = 1..10$ we
# enumerate all $3^T$ answers and compute exactly, under the old policy, the variance of the
# ratio that multiplies the last token's gradient: the full product $\prod_{k \le T} \rho_k$,
# GRPO's token ratio $\rho_T$ and the trace ratio $r_T$ (from `trace_log_ratio`). These are exact
# numbers for one random pair of policies; the cell also repeats the $T = 10$ comparison on
# 5 more random pairs, so that the gap is not a property of one draw.

# %%
V_LEN, MAX_T, PERTURB = 3, 10, 0.8
gen = torch.Generator().manual_seed(1)
logits_new = torch.randn(MAX_T, V_LEN, generator=gen)  # [T, V] one distribution per position
logits_old = logits_new + PERTURB * torch.randn(MAX_T, V_LEN, generator=gen)

exact_var = {"full product": [], "token ratio (GRPO)": [], "trace, lam=0.95": [],
             "trace, lam=1": []}
for T_len in range(1, MAX_T + 1):
    ys = torch.tensor(list(itertools.product(range(V_LEN), repeat=T_len)))  # [V^T, T]
    pos = torch.arange(T_len)
    lp_new = torch.log_softmax(logits_new[:T_len], -1)[pos, ys]  # [V^T, T]
    lp_old = torch.log_softmax(logits_old[:T_len], -1)[pos, ys]
    p_old = lp_old.sum(-1).exp()  # [V^T] probability of each answer under the sampler
    d = lp_new - lp_old
    full = torch.ones_like(d, dtype=torch.bool)
    ratios = {
        "full product": d.sum(-1).exp(),
        "token ratio (GRPO)": d[:, -1].exp(),
        "trace, lam=0.95": trace_log_ratio(d, full, 0.95)[:, -1].exp(),
        "trace, lam=1": trace_log_ratio(d, full, 1.0)[:, -1].exp(),
    }
    for name, r in ratios.items():
        mean = (p_old * r).sum()
        exact_var[name].append(float((p_old * r**2).sum() - mean**2))

# Is the gap a property of this one random pair of policies?  The same exact ratio at
# T = MAX_T for 5 more draws of (logits_new, logits_old) (exact enumeration, no sampling).
full_over_token = [exact_var["full product"][-1] / exact_var["token ratio (GRPO)"][-1]]
for draw in range(2, 7):
    g_draw = torch.Generator().manual_seed(draw)
    l_new = torch.randn(MAX_T, V_LEN, generator=g_draw)
    l_old = l_new + PERTURB * torch.randn(MAX_T, V_LEN, generator=g_draw)
    lp_draw = torch.log_softmax(l_old, -1)[pos, ys]  # ys, pos: the T = MAX_T enumeration above
    d_draw = torch.log_softmax(l_new, -1)[pos, ys] - lp_draw
    p_draw = lp_draw.sum(-1).exp()
    v_full, v_token = (float((p_draw * r**2).sum() - (p_draw * r).sum() ** 2)
                       for r in (d_draw.sum(-1).exp(), d_draw[:, -1].exp()))
    full_over_token.append(v_full / v_token)
print(f"exact Var(full product) / Var(token ratio) at T = {MAX_T}, draw 1 (plotted) and 5 more:",
      [round(x, 1) for x in full_over_token])

chi2 = (torch.softmax(logits_new, -1) ** 2 / torch.softmax(logits_old, -1)).sum(-1) - 1  # [T]
theory = (torch.cumprod(1 + chi2, 0) - 1).tolist()
lengths = list(range(1, MAX_T + 1))
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, values in exact_var.items():
    ax.semilogy(lengths, values, "o-", label=name)
ax.semilogy(lengths, theory, "k:", label=r"$\prod_k(1+\chi^2_k)-1$")
ax.set_xlabel("answer length T")
ax.set_ylabel("exact variance under the old policy")
ax.legend(fontsize=8)
ax.set_title("Full product: exponential in T; token and trace ratios: flat")
plt.show()
print({k: round(v[-1], 3) for k, v in exact_var.items()}, "at T =", MAX_T)

# %% [markdown]
# Exact numbers, not estimates: at $T = 10$ the full product's variance is 28.9 against 0.109
# for the token ratio (265 times) and 0.021 for the traces. Over the 6 random pairs of
# policies the full product / token ratio gap ranges from 8 to 675 times: its size depends on
# the draw (through the per-position $\chi^2_k$), its direction did not in any of them.

# %% [markdown]
# ## 5. An enumerable sequence MDP
#
# Now a policy that conditions on the prefix, as a language model does: a tabular softmax
# with one row of logits per prefix (vocabulary 3, length 5: $1 + 3 + 9 + 27 + 81 = 121$ rows
# of 3 logits). The reward is paid at the end: **1** if the answer starts with token 0 and
# contains token 2 at least twice afterwards, plus **0.5** if the last token repeats the
# first. Every one of the $3^5 = 243$ answers can be enumerated, so
# $J(\theta) = \sum_y \pi_\theta(y) R(y)$ and its exact gradient come from autograd over the
# enumeration.
#
# **Off-policyness.** The answers are sampled from $\pi_{\text{old}}$; the learner is
# $\theta = \theta_{\text{old}} + s\, u$ with $u$ the unit vector along $\nabla J(\theta_{\text{old}})$
# — the situation of PPO's second, third, ... mini-batch update on one batch of rollouts,
# where the learner has already moved uphill. The drift $s$ is reported as the mean per-token
# $\mathrm{KL}(\pi_{\text{old}} \,\|\, \pi_\theta)$ over old answers.
#
# **Estimators.** For each configuration we draw 400 batches of 16 answers (one GRPO group
# each: the MDP has a single prompt), compute leave-one-out advantages with
# `strace_ds.losses.advantages.group_advantages(..., method="rloo")` (unbiased on-policy, so GRPO's
# only bias is the missing historical weight) and obtain each batch's gradient **by autograd
# through `strace_ds.losses.policy_loss`** with the corresponding `TraceConfig`. The two
# importance-sampling baselines are written by hand below and labelled as such.
#
# **Spread.** One set of 400 batches gives one value of each score. Every score is therefore
# measured on **10 independent replicates** (10 sampler seeds, 400 fresh batches each) and
# reported as the mean over the replicates with a 95% Student-t interval (error bars in the
# plots, `mean [low, high]` in the tables). All estimators see the same batches within a
# replicate, so a claim "A beats B" is checked on the **paired** per-replicate difference
# A − B: it is a claim only where the whole interval of that difference is on one side of 0.
# Section 5d then repeats the main comparison on 8 other random MDPs.

# %%
V, T = 3, 5
ALL = torch.tensor(list(itertools.product(range(V), repeat=T)))  # [243, T] every answer


def prefix_nodes(seqs: torch.Tensor) -> torch.Tensor:
    """Row of the logits table used at each position: the id of the prefix y_<t.  [N, T]"""
    nodes = torch.zeros_like(seqs)
    code = torch.zeros(seqs.shape[0], dtype=torch.long)
    offset = 0
    for t in range(T):
        nodes[:, t] = offset + code
        offset += V**t
        code = code * V + seqs[:, t]
    return nodes


N_NODES = sum(V**t for t in range(T))  # 121 prefixes
ALL_NODES = prefix_nodes(ALL)


def reward(seqs: torch.Tensor) -> torch.Tensor:
    """1 if y_1 = 0 and token 2 appears twice after it; +0.5 if the answer ends as it began."""
    right = (seqs[:, 0] == 0) & ((seqs[:, 1:] == 2).sum(-1) >= 2)
    return right.double() + 0.5 * (seqs[:, -1] == seqs[:, 0]).double()


def token_logp(theta: torch.Tensor, seqs: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """log pi(y_t | y_<t) of each token.  theta [N_NODES, V] -> [N, T]"""
    return torch.log_softmax(theta, -1)[nodes, seqs]


def answer_probs(theta: torch.Tensor) -> torch.Tensor:
    return token_logp(theta, ALL, ALL_NODES).sum(-1).exp()  # [243]


def exact_gradient(theta: torch.Tensor) -> torch.Tensor:
    th = theta.clone().requires_grad_(True)
    J = (answer_probs(th) * reward(ALL)).sum()
    (grad,) = torch.autograd.grad(J, th)
    return grad


theta_old = torch.randn(N_NODES, V, generator=torch.Generator().manual_seed(0))
g_old = exact_gradient(theta_old)
uphill = g_old / g_old.norm()
print(f"J(theta_old) = {float((answer_probs(theta_old) * reward(ALL)).sum()):.3f}, "
      f"|grad J| = {float(g_old.norm()):.4f}, {N_NODES * V} parameters")

# %%
N_BATCHES, GROUP = 400, 16
SEEDS = list(range(1, 11))  # 10 independent replicates of N_BATCHES batches (the sampler's seed)
# two-sided 95% quantile of Student's t for 1..12 degrees of freedom (no scipy needed)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179}
NO_CLIP = dict(clip_low=1 - 1e-12, clip_high=1e12)  # trust region off: the bare estimator


def importance_product(per_decision: bool):
    """Hand-written baseline (NOT a library loss): REINFORCE weighted by the product of ratios.

    per_decision=True : token t weighted by W_t * rho_t = prod_{k<=t} rho_k (the exact weight of
                        section 1, with the old-sample advantage in place of Q);
    per_decision=False: every token weighted by prod_{k<=T} rho_k (whole-answer importance
                        sampling, exactly unbiased).
    """

    def loss(logp, old, adv):
        d = (logp - old).detach()  # [N, T]
        w = d.cumsum(-1).exp() if per_decision else d.sum(-1, keepdim=True).exp()
        return -(w * adv[:, None] * logp).sum() / GROUP  # sum over batches of batch means

    return loss


def batch_gradients(theta, theta_behaviour, estimator, seed=1):
    """Gradient estimate of every batch, [N_BATCHES, N_NODES * V], and the loss metrics.

    Each batch gets its own copy of theta, so one autograd call through policy_loss returns
    all the per-batch gradients at once (batches share no parameters).
    """
    sampler = torch.Generator().manual_seed(seed)
    rows = torch.multinomial(answer_probs(theta_behaviour), N_BATCHES * GROUP, True, generator=sampler)
    seqs, nodes = ALL[rows], ALL_NODES[rows]  # [N, T]
    old = token_logp(theta_behaviour, seqs, nodes)  # [N, T]
    adv = group_advantages(reward(seqs), GROUP, method="rloo").advantages  # [N]
    thetas = theta.expand(N_BATCHES, N_NODES, V).clone().requires_grad_(True)
    batch_of = torch.arange(N_BATCHES).repeat_interleave(GROUP)[:, None]  # [N, 1]
    logp = torch.log_softmax(thetas, -1)[batch_of, nodes, seqs]  # [N, T]
    metrics = {}
    if isinstance(estimator, TraceConfig):
        out = policy_loss(logp, old, adv, torch.ones_like(logp, dtype=torch.bool), config=estimator)
        # token_mean (or seq_mean_token_mean) over all N*T tokens; x N_BATCHES*T turns it into the
        # sum over batches of (1/GROUP) sum_i sum_t L_it: an estimate of grad J per batch.
        loss = out.loss * N_BATCHES * T
        metrics = out.metrics
    else:
        loss = estimator(logp, old, adv)
    grads, credit = torch.autograd.grad(loss, (thetas, logp))
    # tokens whose log-prob receives any gradient at all (credit = -dloss/dlogp != 0)
    metrics = {**metrics, "credited_frac": float((credit != 0).double().mean())}
    return -grads.reshape(N_BATCHES, -1), metrics


def score(grads, g_true):
    """Relative squared bias, relative variance and mean cosine to the true gradient."""
    g_true = g_true.reshape(-1)
    mean = grads.mean(0)
    var = ((grads - mean) ** 2).sum(-1).sum() / (N_BATCHES - 1)  # E|g - E g|^2
    bias2 = ((mean - g_true) ** 2).sum() - var / N_BATCHES  # minus the Monte Carlo error of mean
    norm2 = g_true.pow(2).sum()
    cos = torch.nn.functional.cosine_similarity(grads, g_true[None], dim=-1).mean()
    return {"bias2": float(bias2 / norm2), "var": float(var / norm2), "cos": float(cos)}


def replicated(theta, g_true, estimator, seeds=SEEDS, theta_behaviour=None):
    """Scores of one estimator on every replicate: {key: [value per seed]}.

    Replicate = the sampler's seed = an independent set of N_BATCHES batches. Every estimator
    sees the same batches for a given seed, so differences between estimators are paired.
    Besides bias2/var/cos: 'kept' (loss terms not clipped) and 'credited' (tokens whose
    log-prob gets a non-zero gradient).
    """
    behaviour = theta_old if theta_behaviour is None else theta_behaviour
    rows = {"bias2": [], "var": [], "cos": [], "kept": [], "credited": []}
    for seed in seeds:
        grads, m = batch_gradients(theta, behaviour, estimator, seed=seed)
        for key, value in score(grads, g_true).items():
            rows[key].append(value)
        rows["kept"].append(1.0 - m.get("policy/clip_frac_low", 0.0) - m.get("policy/clip_frac_high", 0.0))
        rows["credited"].append(m["credited_frac"])
    return rows


def interval(values):
    """Mean and 95% Student-t interval over independent replicates: (mean, low, high)."""
    x = torch.as_tensor(values, dtype=torch.float64)
    half = T975[len(x) - 1] * float(x.std()) / len(x) ** 0.5
    return float(x.mean()), float(x.mean()) - half, float(x.mean()) + half


def fmt(values, digits=3):
    m, lo, hi = interval(values)
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def paired(a, b):
    """Per-replicate differences a - b (same batches for both)."""
    return [x - y for x, y in zip(a, b)]


def token_kl(theta_behaviour, theta):
    """Mean per-token KL(pi_old || pi_theta) over old answers (exact)."""
    p_old = answer_probs(theta_behaviour)
    seq_kl = (p_old * (p_old.log() - answer_probs(theta).log())).sum()
    return float(seq_kl) / T

# %% [markdown]
# ### 5a. The bare estimators (no trust region)
#
# First with the clip range opened wide, to see the ratio estimators themselves.

# %%
DRIFTS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.2]
BARE = {
    "GRPO (lam=0)": TraceConfig(lam=0.0, **NO_CLIP),
    "P-trace lam=0.5": TraceConfig(lam=0.5, **NO_CLIP),
    "P-trace lam=0.95": TraceConfig(lam=0.95, **NO_CLIP),
    "P-trace lam=1": TraceConfig(lam=1.0, **NO_CLIP),
    "GSPO (sequence window)": TraceConfig(window="sequence", loss_agg="seq_mean_token_mean", **NO_CLIP),
    "IS per-decision (hand-written)": importance_product(per_decision=True),
    "IS whole answer (hand-written)": importance_product(per_decision=False),
}
kl_of_drift, bare = [], {name: [] for name in BARE}  # bare[name][drift] = {key: [per seed]}
for s in DRIFTS:
    theta = theta_old + s * uphill
    g_true = exact_gradient(theta)
    kl_of_drift.append(token_kl(theta_old, theta))
    for name, est in BARE.items():
        bare[name].append(replicated(theta, g_true, est))
print("per-token KL at each drift:", [f"{k:.4f}" for k in kl_of_drift])


def errorbars(ax, x, rows, key, **kw):
    """Mean over the replicates with its 95% interval as error bars."""
    stats = [interval(r[key]) for r in rows]
    mean = [m for m, _, _ in stats]
    err = [[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]]
    ax.errorbar(x, mean, yerr=err, capsize=2, **kw)


def plot_against_drift(results, title):
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for name, rows in results.items():
        style = "--" if "hand-written" in name else "o-"
        for ax, key in zip(axes, ("bias2", "var", "cos")):
            errorbars(ax, kl_of_drift, rows, key, fmt=style, label=name)
    axes[0].set_ylabel(r"bias$^2$ / $|\nabla J|^2$")
    axes[1].set_ylabel(r"variance / $|\nabla J|^2$")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("mean cosine(batch gradient, true gradient)")
    for ax in axes:
        ax.set_xlabel(r"per-token KL($\pi_{old}\,\|\,\pi_\theta$)")
    axes[2].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()


plot_against_drift(bare, "Bare estimators (trust region off): mean and 95% interval over 10 x 400 batches")


def table(results, key, names, digits=3):
    """One row per drift: mean [95% interval] over the replicates of each estimator."""
    print(f"{key}: mean [95% interval] over {len(SEEDS)} replicates of {N_BATCHES} batches")
    print(f"{'KL/token':>9} " + " ".join(f"{n[:26]:>27}" for n in names))
    for i in range(len(DRIFTS)):
        print(f"{kl_of_drift[i]:9.4f} " + " ".join(f"{fmt(results[n][i][key], digits):>27}" for n in names))


for key in ("bias2", "var", "cos"):
    table(bare, key, list(BARE), digits=4 if key == "bias2" else 3)
print("\ncosine gain over bare GRPO, paired over the replicates: mean [95% interval]")
for name in ("P-trace lam=0.5", "P-trace lam=0.95", "P-trace lam=1"):
    gains = [fmt(paired(bare[name][i]["cos"], bare["GRPO (lam=0)"][i]["cos"])) for i in range(len(DRIFTS))]
    print(f"  {name:17s} " + "  ".join(gains))

# %% [markdown]
# Read the three panels together (numbers: mean [95% interval] over the 10 replicates, from
# the tables above; "the largest drift" is per-token KL 0.019):
#
# * **On-policy** (KL = 0) GRPO, GSPO and both importance products coincide; their bias$^2$,
#   $-0.0008$ $[-0.0035, 0.0020]$, is indistinguishable from 0. The P-traces with $\lambda > 0$
#   are *biased already on-policy* (bias$^2$ 0.21 $[0.17, 0.25]$ at $\lambda = 0.5$,
#   0.92 $[0.80, 1.04]$ at $\lambda = 0.95$): token $k$ collects $\sum_{t \ge k} w_{t,k}$ of the
#   credit, which front-loads the answer ($\lambda = 1$ gives the first token $H_T$, the
#   harmonic number, times GRPO's credit and the last $1/T$ of it; notebook 02 plots it). That
#   is a reweighting of positions — a different objective — and it also raises the variance
#   (10.8 $[10.5, 11.1]$ at $\lambda = 0.95$ against GRPO's 6.3 $[6.2, 6.5]$).
# * **Off-policy**, GRPO's bias grows with the drift (bias$^2$ 0.003 $[0.000, 0.005]$ at the
#   smallest drift, 0.077 $[0.067, 0.086]$ at the largest): the missing $W_t$. The whole-answer
#   importance product's bias$^2$ interval contains 0 at every drift ($-0.002$
#   $[-0.005, 0.001]$ at the largest; GRPO minus it, paired: 0.079 $[0.070, 0.088]$). Its price
#   is variance: at the largest drift the highest of all, 6.0 $[5.7, 6.2]$, i.e.
#   2.47 $[2.42, 2.52]$ times GRPO's (by section 4, exponential in the answer length). On these
#   5-token answers its relative variance does not itself grow with the drift (6.3 on-policy,
#   5.6-6.0 after); GRPO's falls, so the *ratio* grows.
# * The per-batch cosine nonetheless ranks the P-traces first, by a small margin: the paired
#   gain of $\lambda = 0.95$ over bare GRPO is 0.018 $[0.013, 0.024]$ on-policy and shrinks to
#   0.006 $[0.002, 0.011]$ at the largest drift (above 0 at every drift, for $\lambda = 0.5$ and
#   1 too). Do not read that as "the trace is a better importance weight": a plausible reading
#   (not tested here) is that on this MDP the first positions' logits are shared by every answer
#   while deep prefixes are visited a few times per batch, so front-loading the credit puts
#   weight where the estimate is least noisy. The bias panel is the honest one: without a trust
#   region, bias$^2$ rises with $\lambda$ at every drift (0.077 at $\lambda = 0$ against
#   0.34 $[0.29, 0.39]$ at $\lambda = 0.95$, largest drift) — $\lambda > 0$ buys no bias
#   reduction here.

# %% [markdown]
# ### 5b. Bias, variance and cosine against $\lambda$
#
# At a fixed drift, sweep the trace decay, with the trust region off and with P-trace's own
# clip range (0.2 / 0.28). Horizontal lines: the importance products and GSPO (their means over
# the replicates, trust region off).

# %%
LAMS = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0]
FIXED_DRIFT = 0.4
theta = theta_old + FIXED_DRIFT * uphill
g_true = exact_gradient(theta)
lam_sweep = {
    "trust region off": [replicated(theta, g_true, TraceConfig(lam=lam, **NO_CLIP)) for lam in LAMS],
    "clip 0.2 / 0.28": [replicated(theta, g_true, TraceConfig.preset("p_trace", lam=lam, form="ratio")) for lam in LAMS],
}
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
for label, rows in lam_sweep.items():
    for ax, key in zip(axes, ("bias2", "var", "cos")):
        errorbars(ax, LAMS, rows, key, fmt="o-", label=f"P-trace, {label}")
i = DRIFTS.index(FIXED_DRIFT)
for name in ("GSPO (sequence window)", "IS per-decision (hand-written)", "IS whole answer (hand-written)"):
    for ax, key in zip(axes, ("bias2", "var", "cos")):
        level = interval(bare[name][i][key])[0]
        ax.axhline(level, ls=":", lw=1, color="k" if "IS" in name else "g")
        ax.text(1.0, level, name.split(" (")[0], fontsize=6, ha="right", va="bottom")
for ax, key in zip(axes, (r"bias$^2$ / $|\nabla J|^2$", r"variance / $|\nabla J|^2$", "mean cosine")):
    ax.set_xlabel(r"$\lambda$ ($\lambda = 0$ is GRPO)")
    ax.set_ylabel(key)
axes[1].set_yscale("log")
axes[2].legend(fontsize=8)
fig.suptitle(f"Sweep of lambda at drift s = {FIXED_DRIFT} (per-token KL {kl_of_drift[i]:.4f}); "
             "mean and 95% interval over 10 x 400 batches")
fig.tight_layout()
plt.show()
for label, rows in lam_sweep.items():
    print(f"P-trace, {label}: bias2 mean [95% interval] per lambda")
    for lam, r in zip(LAMS, rows):
        print(f"  lam={lam:<5} bias2 {fmt(r['bias2'], 4)}   cos {fmt(r['cos'])}")
# is the bias lower at lambda = 0.95 than at lambda = 0 (GRPO)?  paired over the replicates
sweep_bias_drop = {label: paired(rows[0]["bias2"], rows[LAMS.index(0.95)]["bias2"])
                   for label, rows in lam_sweep.items()}
for label, d in sweep_bias_drop.items():
    print(f"{label}: bias2(lam=0) - bias2(lam=0.95) = {fmt(d, 4)}")

# %% [markdown]
# ### 5c. With the trust regions that are actually trained
#
# The presets as the library ships them (`TraceConfig.preset`), plus two controls: P-trace
# with GRPO's symmetric clip (so that the wider `clip_high = 0.28` is not what makes the
# difference) and GSPO with a 0.2 clip (its preset range, $3\cdot10^{-4}$ / $4\cdot10^{-4}$, is tuned for
# answers thousands of tokens long, where a length-normalised ratio barely moves). Besides
# the three scores we record the fraction of loss terms that survive the clip.

# %%
CLIPPED = {
    "GRPO (preset)": TraceConfig.preset("grpo"),
    "P-trace (preset, lam=0.95)": TraceConfig.preset("p_trace", form="ratio"),
    "P-trace, clip 0.2/0.2": TraceConfig.preset("p_trace", clip_high=0.2, form="ratio"),
    "GSPO (preset clip)": TraceConfig.preset("gspo"),
    "GSPO, clip 0.2": TraceConfig.preset("gspo", clip_low=0.2, clip_high=0.2),
}
clipped = {name: [] for name in CLIPPED}  # clipped[name][drift] = {key: [per seed]}
for s in DRIFTS:
    theta = theta_old + s * uphill
    g_true = exact_gradient(theta)
    for name, cfg in CLIPPED.items():
        clipped[name].append(replicated(theta, g_true, cfg))

plot_against_drift(clipped, "With trust regions (presets): mean and 95% interval over 10 x 400 batches")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for name in CLIPPED:
    errorbars(axes[0], kl_of_drift, clipped[name], "kept", fmt="o-", label=name)  # loss terms not clipped
    errorbars(axes[1], kl_of_drift, clipped[name], "credited", fmt="o-", label=name)  # non-zero credit
axes[0].set_ylabel("fraction of loss terms not clipped")
axes[1].set_ylabel("fraction of tokens with non-zero credit")
for ax in axes:
    ax.set_xlabel(r"per-token KL($\pi_{old}\,\|\,\pi_\theta$)")
axes[1].legend(fontsize=7)
fig.tight_layout()
plt.show()

for key in ("cos", "bias2", "kept", "credited"):
    table(clipped, key, list(CLIPPED), digits=4 if key == "bias2" else 3)

# The claim to check: the P-trace preset's cosine minus GRPO's, paired (same batches), per drift.
P, G = "P-trace (preset, lam=0.95)", "GRPO (preset)"
cos_gain = [paired(clipped[P][i]["cos"], clipped[G][i]["cos"]) for i in range(len(DRIFTS))]
bias_drop = [paired(clipped[G][i]["bias2"], clipped[P][i]["bias2"]) for i in range(len(DRIFTS))]
print("\nP-trace preset minus GRPO preset, paired over the replicates: mean [95% interval]")
for i in range(len(DRIFTS)):
    print(f"  KL/token {kl_of_drift[i]:.4f}: cos gain {fmt(cos_gain[i])}   "
          f"bias2 reduction {fmt(bias_drop[i], 4)}")
gspo02_gain = [paired(clipped["GSPO, clip 0.2"][i]["cos"], clipped[P][i]["cos"]) for i in range(len(DRIFTS))]
print("GSPO clip 0.2 minus P-trace preset, cosine, paired: " + "  ".join(fmt(d) for d in gspo02_gain))

# %% [markdown]
# What the clip changes (numbers: mean [95% interval] over the 10 replicates, paired where
# two methods are compared). At the smallest drift (KL 0.0005) nothing is clipped yet and
# every preset behaves as its bare estimator. From $s = 0.4$ (KL 0.0019) GRPO's bias$^2$ jumps
# to 0.77 $[0.76, 0.79]$ although only 1.1% of its terms are clipped: a token whose own ratio
# crossed $1 \pm 0.2$ gets **no gradient at all** — and under an uphill drift those are exactly
# the tokens the true gradient still wants to push. The two right-hand plots separate the two
# effects: the P-trace clips about as many *loss terms* as GRPO (slightly more at the larger
# drifts: it keeps 87.1% against GRPO's 88.6% at the largest, both intervals ±0.1%), but a
# token whose own term is clipped still receives credit through the later terms whose trace
# contains it, so the share of tokens with non-zero credit stays at its on-policy 99.7% while
# GRPO's falls to 88.3%.
#
# **P-trace preset vs GRPO preset.** The paired cosine gain is above 0 at every drift:
# 0.018 $[0.013, 0.024]$ on-policy, 0.020 $[0.015, 0.025]$ at KL 0.0005, then
# 0.157 $[0.148, 0.165]$, 0.157 $[0.148, 0.166]$, 0.130 $[0.121, 0.139]$ and
# 0.094 $[0.085, 0.102]$ at the largest drift; section 5d finds the same sign on 8 other MDPs.
# The bias is *not* lower everywhere: where nothing is clipped ($s \le 0.2$) the P-trace
# carries its on-policy positional bias (GRPO minus P-trace bias$^2$: $-0.92$ $[-1.04, -0.81]$
# on-policy, $-0.79$ $[-0.90, -0.68]$ at $s = 0.2$); once clipping starts it is lower by
# 0.67 $[0.65, 0.68]$ at $s = 0.4$, down to 0.30 $[0.29, 0.32]$ at the largest drift. In the
# sweep of section 5b (orange, with the clip) bias$^2$ falls from 0.77 $[0.76, 0.79]$ at
# $\lambda = 0$ to 0.11 $[0.10, 0.12]$ at $\lambda = 0.9$ and is flat from there to $\lambda = 1$
# (overlapping intervals); without the clip (blue) it rises with $\lambda$. The control with
# GRPO's symmetric clip keeps most of the gain at $s = 0.4$ (cosine 0.273 $[0.261, 0.284]$
# against the preset's 0.279 and GRPO's 0.123), less at larger drifts (0.179 against the
# preset's 0.262 at $s = 0.6$): the wider `clip_high` accounts for part of the gain there. This
# is the measured form of "partial trust-region preservation" in our formalisation — with its
# flip side stated plainly: what is held inside the region is the *trace* ratio, so an
# individual token that has left it can still be pushed by its neighbours.
#
# Two more observations. GSPO with its preset range clips 72% of the loss terms (whole answers)
# as soon as anything moves and its cosine turns negative ($-0.175$ $[-0.179, -0.171]$ at
# $s = 0.2$). GSPO with a 0.2 clip is *below* the P-trace preset where nothing is clipped
# (paired difference $-0.018$ $[-0.024, -0.013]$ on-policy, $-0.036$ $[-0.042, -0.030]$ at
# $s = 0.2$) and above it from $s = 0.4$ on (0.050 $[0.044, 0.056]$ there, 0.204
# $[0.193, 0.216]$ at the largest drift): best of all once the learner has moved, on these
# 5-token answers (on long answers the sequence ratio averages thousands of tokens and the
# comparison may change; not measured here). At the largest drift every clipped objective
# except GSPO-0.2 points against $\nabla J$, with the whole interval below 0 (P-trace preset
# $-0.037$ $[-0.053, -0.022]$, GRPO $-0.131$ $[-0.139, -0.124]$): the trust region saying "stop
# and resample".

# %% [markdown]
# ### 5d. Another MDP, the same verdict?
#
# Everything above is one MDP: one random $\theta_{\text{old}}$. The replicates measure the
# sampling noise of the batches, not how much the ranking depends on that draw. So the
# comparison of the two trained presets is repeated on 8 more MDPs (same reward, same drifts
# along each one's own $\nabla J(\theta_{\text{old}})$, $\theta_{\text{old}}$ drawn with seeds
# 1..8), one replicate of 400 batches each, and the paired cosine gain is summarised over the
# 8 MDPs.

# %%
MDP_SEEDS = list(range(1, 9))
mdp_gain = [[] for _ in DRIFTS]  # mdp_gain[drift] = [cos(P-trace) - cos(GRPO) per MDP]
mdp_kl = [[] for _ in DRIFTS]
for mdp_seed in MDP_SEEDS:
    start = torch.randn(N_NODES, V, generator=torch.Generator().manual_seed(mdp_seed))
    g_start = exact_gradient(start)
    for i, s in enumerate(DRIFTS):
        theta = start + s * g_start / g_start.norm()
        g_true = exact_gradient(theta)
        cos = {name: replicated(theta, g_true, CLIPPED[name], seeds=[1], theta_behaviour=start)["cos"][0]
               for name in (P, G)}
        mdp_gain[i].append(cos[P] - cos[G])
        mdp_kl[i].append(token_kl(start, theta))
print(f"cos(P-trace preset) - cos(GRPO preset) over {len(MDP_SEEDS)} MDPs: mean [95% interval], "
      "and how many MDPs have a positive gain")
for i, s in enumerate(DRIFTS):
    print(f"  s={s:.1f} (mean KL/token {sum(mdp_kl[i]) / len(MDP_SEEDS):.4f}): {fmt(mdp_gain[i])}, "
          f"positive in {sum(g > 0 for g in mdp_gain[i])}/{len(MDP_SEEDS)}")

# %% [markdown]
# Over the 8 other MDPs the P-trace preset's cosine gain over GRPO's has its whole 95%
# interval above 0 at every drift: 0.09 $[0.05, 0.13]$ on-policy, 0.34 $[0.20, 0.49]$ at
# $s = 0.4$, 0.27 $[0.06, 0.49]$ at $s = 1.2$; it is positive on all 8 MDPs except one at
# $s = 1.2$. The gain varies a lot from one MDP to the next (hence the wide intervals), so the
# size measured on the first MDP is not a general number; its sign held.

# %% [markdown]
# ### 5e. The trace forms: keeping PPO's per-token guarantee
#
# The P-trace above is the **ratio form**: the clip bounds the trace ratio, an average of
# about $1/(1-\lambda)$ log-ratios, so no single token is bounded (`docs/ALGORITHMS.md`, "Trace
# forms"). Two other forms keep PPO's guarantee that no loss term pushes a token past its own
# clip bound:
#
# * the **token gate** (`form="gate"`): the ratio form, but token $k$'s log-ratio carries no
#   gradient once its own ratio has left $[1-\epsilon_{low}, 1+\epsilon_{high}]$ on its
#   advantage's side;
# * the **weight form** (`form="weight"`): each token keeps its own PPO-clipped term, multiplied
#   by a detached, bounded weight $w_t = \mathrm{clip}(\exp(\sum_{k<t} \lambda^{t-k}\delta_k), 0, 2)$:
#   a decayed product of the past ratios, i.e. an estimate of the historical weight
#   $W_t = \prod_{k<t}\rho_k$ that PPO drops. On-policy it is GRPO.
#
# Same MDP, same drifts, same 10 replicates of 400 batches, paired with GRPO's preset. Also the
# weight form at $\lambda = 1$ without an upper bound: the exact per-decision weight $W_t$ inside
# PPO's per-token clip.

# %%
FORMS_LAB = {
    "P-trace gate (lam=0.95)": TraceConfig.preset("p_trace", form="gate"),
    "P-trace weight (lam=0.95, w in [0, 2])": TraceConfig.preset("p_trace", form="weight"),
    "weight lam=1, no upper bound": TraceConfig.preset("p_trace", form="weight", lam=1.0,
                                                       weight_max=math.inf),
}
forms = {name: [] for name in FORMS_LAB}
for s in DRIFTS:
    theta = theta_old + s * uphill
    g_true = exact_gradient(theta)
    for name, cfg in FORMS_LAB.items():
        forms[name].append(replicated(theta, g_true, cfg))
forms_all = {G: clipped[G], P: clipped[P], **forms}
plot_against_drift(forms_all, "Trace forms with their trust regions: mean and 95% interval")
for key in ("cos", "bias2", "var"):
    table(forms_all, key, list(forms_all), digits=4 if key != "cos" else 3)

GATE, WEIGHT, EXACT_W = list(FORMS_LAB)
form_cos_gain = {name: [paired(forms[name][i]["cos"], clipped[G][i]["cos"])
                        for i in range(len(DRIFTS))] for name in FORMS_LAB}
form_var_ratio = {name: [[a / b for a, b in zip(forms[name][i]["var"], clipped[G][i]["var"])]
                         for i in range(len(DRIFTS))] for name in FORMS_LAB}
print("each form minus the GRPO preset, paired over the replicates: cosine gain | variance ratio")
for name in FORMS_LAB:
    print(f"  {name}")
    for i in range(len(DRIFTS)):
        print(f"    KL/token {kl_of_drift[i]:.4f}: cos gain {fmt(form_cos_gain[name][i])}   "
              f"var / GRPO's {fmt(form_var_ratio[name][i])}")

# %% [markdown]
# What the forms do on this MDP (mean [95% interval] over the 10 replicates, paired with GRPO's
# preset on the same batches):
#
# * **The weight form is GRPO on-policy** (drift 0: cosine gain exactly 0, variance ratio exactly
#   1: every weight is 1 when nothing has moved). Off-policy it stays close to GRPO: cosine gain
#   $-0.010$ $[-0.010, -0.010]$ at KL 0.0005, $+0.033$ $[0.032, 0.034]$ at KL 0.008, $+0.007$
#   $[0.006, 0.009]$ at the largest drift, for a variance 1.08 to 1.90 times GRPO's. Even the
#   exact historical weight ($\lambda = 1$, no upper bound) buys at most $+0.031$ of cosine, at up
#   to 2.87 times the variance: on this MDP GRPO's error off-policy is not the missing weight
#   $W_t$ but the clip (below), which the weight form keeps.
# * **The gate is the ratio form on-policy** (drift 0: exactly the P-trace preset) and, once
#   tokens leave their own bounds, the **worst** of the three: $-0.075$ $[-0.081, -0.069]$ below
#   GRPO at KL 0.0019 and $-0.189$ $[-0.194, -0.185]$ at the largest drift, $0.15$ to $0.28$ below
#   the ratio form. It cuts both the tokens GRPO cuts and the later terms whose trace ratio is
#   clipped. The ratio form's better alignment here comes *from* the credit it keeps giving
#   tokens that have left their own bounds (section 5c), the very push the gate removes and the
#   push that collapses training when a batch is reused (`docs/RESULTS.md`, credit study). On this MDP the
#   per-token guarantee and the ratio form's alignment gain are the same thing, traded off.
# * The verdict on training runs is the credit study's (`docs/RESULTS.md`, "Credit-assignment study").

# %% [markdown]
# ## What you saw
#
# * The exact off-policy gradient carries the historical weight $W_t = \prod_{k<t}\rho_k$;
#   GRPO drops it ($\lambda = 0$ of the trace family) and becomes biased as the learner
#   drifts from the sampler.
# * The full product is unbiased but its variance grows exponentially with length (exact
#   enumeration, section 4: 265 times the token ratio's at $T = 10$, 8 to 675 times over 6
#   random pairs of policies); token and trace ratios stay flat. In 5a its variance relative
#   to GRPO's grows with the drift, to 2.47 $[2.42, 2.52]$ times at the largest.
# * The trace ratio is a normalised geometric average of recent ratios, not an importance
#   weight: **without** a trust region, $\lambda > 0$ reweights positions (biased even
#   on-policy) and adds variance; it buys no bias reduction on this MDP (its cosine is higher
#   than GRPO's, but only by 0.006-0.02).
# * **With** the trust regions that are trained, the P-trace preset's batch gradient has a
#   higher cosine to the true gradient than GRPO's at every drift we tried: paired gain about
#   0.02 before anything is clipped, 0.09-0.16 once the clip is active (every 95% interval
#   above 0), and above 0 over 8 other MDPs too (section 5d). Its bias is lower than GRPO's
#   only once the clip is active (before that it carries the positional bias), and in that
#   regime a larger $\lambda$ lowers it up to $\lambda \approx 0.9$: a token whose own term is
#   clipped keeps receiving credit through the trace. GSPO with a 0.2 clip had the highest
#   cosine of all once the learner had moved ($s \ge 0.4$), on these short answers; with its
#   preset clip it had the lowest.
# * **The trace forms** (5e): the weight form, which keeps PPO's per-token clip and reweights
#   by the past ratios, is GRPO on-policy and within a few hundredths of GRPO's cosine
#   off-policy; the token gate, which keeps the ratio form but stops pushing tokens past their
#   own bounds, loses the ratio form's alignment gain entirely and falls below GRPO once the
#   clip is active.
# * Scope: small random MDPs (one studied in detail with 10 replicates of 400 batches per
#   point, 8 more for the main comparison), drift along the improvement direction only. The
#   claims checked by `tests/repo/test_notebooks.py` are the intervals printed below
#   (`[mean, low, high]`).

# %%
def ci(values, digits=6):
    """[mean, low, high] of the 95% interval, for SUMMARY_JSON."""
    return [round(v, digits) for v in interval(values)]


W, GR = "IS whole answer (hand-written)", "GRPO (lam=0)"
summary = {
    "drifts": DRIFTS,
    "token_kl": kl_of_drift,
    "replicates": len(SEEDS),
    "batches_per_replicate": N_BATCHES,
    # every interval below: [mean, low, high], 95% Student-t over the replicates
    "cos_grpo_preset": [ci(clipped[G][i]["cos"]) for i in range(len(DRIFTS))],
    "cos_p_trace_preset": [ci(clipped[P][i]["cos"]) for i in range(len(DRIFTS))],
    "cos_gain_p_trace_minus_grpo": [ci(d) for d in cos_gain],
    "bias2_drop_grpo_minus_p_trace": [ci(d) for d in bias_drop],
    "cos_gain_over_mdps": [ci(d) for d in mdp_gain],
    "mdps": len(MDP_SEEDS),
    "sweep_bias2_lam0_minus_lam095": {k: ci(d) for k, d in sweep_bias_drop.items()},
    "var_is_whole_over_grpo_at_max_drift": ci(
        [a / b for a, b in zip(bare[W][-1]["var"], bare[GR][-1]["var"])]),
    "bias2_grpo_bare_at_max_drift": ci(bare[GR][-1]["bias2"]),
    "bias2_is_whole_bare_at_max_drift": ci(bare[W][-1]["bias2"]),
    "bias2_grpo_minus_is_whole_bare_at_max_drift": ci(paired(bare[GR][-1]["bias2"], bare[W][-1]["bias2"])),
    "exact_var_full_product_maxT": exact_var["full product"][-1],
    "exact_var_token_ratio_maxT": exact_var["token ratio (GRPO)"][-1],
    "exact_var_full_over_token_maxT_draws": full_over_token,
    "cos_gain_gspo02_minus_p_trace": [ci(d) for d in gspo02_gain],
    "form_cos_gain_minus_grpo": {k: [ci(d) for d in v] for k, v in form_cos_gain.items()},
    "form_var_over_grpo": {k: [ci(d) for d in v] for k, v in form_var_ratio.items()},
    "form_cos_gain_gate_minus_p_trace": [
        ci(paired(forms[GATE][i]["cos"], clipped[P][i]["cos"])) for i in range(len(DRIFTS))],
    "runtime_s": round(time.perf_counter() - NOTEBOOK_START, 1),
}
print("SUMMARY_JSON " + json.dumps(summary))
