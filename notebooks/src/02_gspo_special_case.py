# %% [markdown]
# # 02 — GSPO and GRPO as members of the trace family
#
# The abstract of *Beyond Uniform Credit Assignment: Selective Eligibility Traces for RLVR*
# (Mou et al., 2026) says that GSPO "is a special instance of the eligibility traces method
# operating under uniform credit assignment". This notebook makes that statement concrete **in
# this project's formalisation** of the P-trace/S-trace (`docs/ALGORITHMS.md`; the
# paper's own derivation is not public), and checks it numerically against independent
# implementations written here from the GRPO and GSPO papers.
#
# The trace here is in its **ratio form** (`form="ratio"`, the form the presets first shipped
# with); the `p_trace`/`s_trace` presets now use the weight form, chosen by the credit study
# (`docs/ALGORITHMS.md`, "Trace forms"; section 5e of notebook 01 compares the forms).
#
# 1. GSPO's sequence ratio is the trace with a uniform, whole-answer window;
#    GRPO is the trace with $\lambda = 0$.
# 2. `strace_ds.losses.policy_loss` reproduces both to float64 precision (gradients included).
# 3. Where each member puts the credit of one answer (`token_credit`).
# 4. The clipping difference: GSPO keeps or drops a whole answer; the P-trace cuts only the
#    tokens whose trace ratio leaves the trust region.

# %% [markdown]
# ## 1. Derivation
#
# With $\delta_{i,t} = \log \pi_\theta(y_{i,t} \mid x, y_{i,<t}) - \log \pi_{\text{old}}(y_{i,t} \mid x, y_{i,<t})$,
# GSPO (Zheng et al., 2025) uses one importance ratio per answer, the length-normalised
# sequence likelihood ratio
#
# $$s_i(\theta) = \left(\frac{\pi_\theta(y_i \mid x)}{\pi_{\text{old}}(y_i \mid x)}\right)^{1/|y_i|}
#   = \exp\Big(\frac{1}{|y_i|} \sum_{k=1}^{|y_i|} \delta_{i,k}\Big),
#   \qquad J_{\text{GSPO}} = \frac1G \sum_{i=1}^{G} \min\big(s_i A_i,\ \operatorname{clip}(s_i, 1-\epsilon_l, 1+\epsilon_h) A_i\big).$$
#
# The trace family computes, for every token $t$, a log-ratio $\ell_{i,t} = \sum_k w_{t,k}\, \delta_{i,k}$
# with normalised weights $\sum_k w_{t,k} = 1$, and applies the clipped objective per token.
# The **causal** window of the P-trace uses $w_{t,k} \propto \lambda^{t-k}$ for $k \le t$ and
# $0$ for $k > t$. Take instead the **uniform window over the whole answer**,
# $w_{t,k} = 1/|y_i|$ for every $t$ and every $k$ (`window="sequence"`): then
#
# $$\ell_{i,t} = \frac{1}{|y_i|} \sum_{k} \delta_{i,k} = \log s_i \quad \text{for every } t,$$
#
# every token of the answer carries the same ratio $s_i$, the per-token objectives are all equal,
# and the sequence-mean-of-token-means aggregation
# $\frac1G \sum_i \frac{1}{|y_i|} \sum_t L_{i,t}$ collapses to GSPO's $\frac1G \sum_i L_i$.
# Because $\partial \ell_{i,t} / \partial \delta_{i,k} = 1/|y_i|$ for all $t, k$, every token receives
# the same share of every term: **uniform credit assignment**, as the abstract puts it.
#
# At the other end, $\lambda = 0$ gives $w_{t,k} = [k = t]$, so $\ell_{i,t} = \delta_{i,t}$ and the
# family member is PPO-clip on token ratios — GRPO (with DAPO's token-mean aggregation in our
# preset).

# %%
import json
import time

import matplotlib.pyplot as plt
import torch

from strace_ds.losses import PRESETS, TraceConfig, policy_loss, token_credit

torch.set_default_dtype(torch.float64)
NOTEBOOK_START = time.perf_counter()
print({name: cfg for name, cfg in PRESETS.items() if name in ("grpo", "gspo")})

# %% [markdown]
# ## 2. Independent implementations, written from the papers
#
# Deliberately plain: Python loops over answers and tokens, no masking tricks, nothing shared
# with `strace_ds.losses`.

# %%
def grpo_reference(logp, old, adv, lengths, clip_low=0.2, clip_high=0.2):
    """PPO-clip on token ratios, averaged over all valid tokens of the batch (GRPO, DAPO mean)."""
    terms = []
    for i, n in enumerate(lengths):
        for t in range(n):
            ratio = torch.exp(logp[i, t] - old[i, t])
            clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
            terms.append(-torch.minimum(ratio * adv[i], clipped * adv[i]))
    return torch.stack(terms).mean()


def gspo_reference(logp, old, adv, lengths, clip_low=3e-4, clip_high=4e-4):
    """GSPO: s_i = exp(mean_t delta_it), sequence-level clip, mean over answers."""
    terms = []
    for i, n in enumerate(lengths):
        s = torch.exp(sum(logp[i, t] - old[i, t] for t in range(n)) / n)
        clipped = torch.clamp(s, 1 - clip_low, 1 + clip_high)
        terms.append(-torch.minimum(s * adv[i], clipped * adv[i]))
    return torch.stack(terms).mean()


def make_batch(seed, lengths, drift):
    """Ragged answers padded to max(lengths); padding holds garbage the loss must ignore."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # [B, T]
    old = -torch.rand(B, T, generator=g) * 3  # [B, T] log-probs of the sampler
    logp = old + drift * torch.randn(B, T, generator=g)  # [B, T] the learner has moved
    logp = torch.where(mask, logp, torch.full_like(logp, 123.0))  # garbage in the padding
    adv = torch.randn(B, generator=g)  # [B]
    return logp, old, adv, mask


def grads_of(loss_fn, logp):
    x = logp.detach().clone().requires_grad_(True)
    loss = loss_fn(x)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g

# %% [markdown]
# Compare losses and gradients w.r.t. the log-probs on batches whose drift ranges from
# "nothing clipped" to "most clipped", and for several clip widths (GSPO's preset range,
# a 0.2 range and an asymmetric one).

# %%
LENGTHS = [3, 7, 12, 5, 12, 9, 1, 10]
max_diff = {"gspo": 0.0, "grpo": 0.0}
rows = []
for seed, drift in enumerate([1e-5, 1e-4, 1e-3, 0.05, 0.3, 1.0]):
    logp, old, adv, mask = make_batch(seed, LENGTHS, drift)
    for lo, hi in [(3e-4, 4e-4), (0.2, 0.2), (0.1, 0.3)]:
        # GSPO = the uniform window (lam unused), sequence-mean aggregation
        cfg = TraceConfig.preset("gspo", clip_low=lo, clip_high=hi)
        l_lib, g_lib = grads_of(lambda x: policy_loss(x, old, adv, mask, config=cfg).loss, logp)
        l_ref, g_ref = grads_of(lambda x: gspo_reference(x, old, adv, LENGTHS, lo, hi), logp)
        d_gspo = max(float((l_lib - l_ref).abs()), float((g_lib - g_ref).abs().max()))
        # GRPO = lam 0, causal window, token-mean aggregation
        cfg = TraceConfig(lam=0.0, window="causal", clip_low=lo, clip_high=hi)
        l_lib, g_lib = grads_of(lambda x: policy_loss(x, old, adv, mask, config=cfg).loss, logp)
        l_ref, g_ref = grads_of(lambda x: grpo_reference(x, old, adv, LENGTHS, lo, hi), logp)
        d_grpo = max(float((l_lib - l_ref).abs()), float((g_lib - g_ref).abs().max()))
        clipped = policy_loss(logp, old, adv, mask, config=cfg).metrics
        rows.append((drift, lo, hi, d_gspo, d_grpo,
                     clipped["policy/clip_frac_low"] + clipped["policy/clip_frac_high"]))
        max_diff["gspo"] = max(max_diff["gspo"], d_gspo)
        max_diff["grpo"] = max(max_diff["grpo"], d_grpo)

print(f"{'drift':>7} {'clip':>14} {'|GSPO diff|':>12} {'|GRPO diff|':>12} {'GRPO clip frac':>15}")
for drift, lo, hi, dg, dr, cf in rows:
    print(f"{drift:7.0e} {f'{lo:g}/{hi:g}':>14} {dg:12.2e} {dr:12.2e} {cf:15.2f}")
print(f"\nmax abs difference (loss and every gradient entry), float64: "
      f"window='sequence' vs GSPO {max_diff['gspo']:.2e}, lam=0 vs GRPO {max_diff['grpo']:.2e}")

# %% [markdown]
# Both identities hold to rounding error (about $10^{-16}$), across clip widths and with the clip
# inactive, partly active and mostly active. The padding's garbage log-probs (123.0) never leak
# into the result.

# %% [markdown]
# ## 3. Where the credit of one answer goes
#
# `token_credit` returns $-\partial\,\text{loss} / \partial \log \pi_\theta(y_t)$: how hard a
# gradient step pushes each token up. We take a batch of four answers to one arithmetic prompt,
# **on-policy** (old log-probs = current ones, as in the first update after sampling), with
# made-up token entropies that are high where the model must choose (the operands and the
# result) and low on the template. Then we plot the credit of the first answer ($A > 0$) under
# four members of the family.

# %%
tokens = ["6", " *", " ", "3", " =", " ", "1", "8", ".", " The", " answer", " is",
          " \\boxed{", "1", "8", "}."]
T = len(tokens)
entropy_row = torch.tensor([1.6, 0.1, 0.05, 1.2, 0.1, 0.05, 0.9, 1.4, 0.1, 0.05, 0.02, 0.02,
                            0.05, 0.3, 0.2, 0.05])  # [T] high at the forks
g = torch.Generator().manual_seed(0)
B = 4
logp = -entropy_row * torch.rand(B, T, generator=g) - 0.05  # [B, T]
entropy = (entropy_row + 0.1 * torch.rand(B, T, generator=g)).clamp_min(0)  # [B, T]
mask = torch.ones(B, T, dtype=torch.bool)
adv = torch.tensor([1.0, -0.5, 0.3, -0.8])  # [B] (answer 0 was right)
members = {
    "GRPO": TraceConfig.preset("grpo"),
    "GSPO": TraceConfig.preset("gspo"),
    "P-trace (lam=0.95)": TraceConfig.preset("p_trace", form="ratio"),
    "S-trace (lam=0.95, q=0.2)": TraceConfig.preset("s_trace", form="ratio"),
}
credit = {name: token_credit(logp, logp, adv, mask, entropy=entropy, config=cfg)
          for name, cfg in members.items()}
selected = policy_loss(logp, logp, adv, mask, entropy=entropy, config=members["S-trace (lam=0.95, q=0.2)"]).selected

fig, axes = plt.subplots(len(members), 1, figsize=(10, 8), sharex=True)
for ax, (name, c) in zip(axes, credit.items()):
    colors = ["tab:red" if selected[0, t] else "tab:blue" for t in range(T)]
    ax.bar(range(T), c[0], color=colors if name.startswith("S-trace") else "tab:blue")
    ax.set_ylabel("credit")
    ax.set_title(f"{name}: total {float(c[0].sum()):.4f}", fontsize=9)
    ax.axhline(0, color="k", lw=0.5)
axes[-1].set_xticks(range(T), tokens, rotation=60)
axes[-1].set_xlabel("answer 0 tokens (S-trace panel: red = selected, top-20% entropy)")
fig.tight_layout()
plt.show()

# %% [markdown]
# * **GRPO**: every token gets $A/N$ ($N$ = valid tokens in the batch) — uniform.
# * **GSPO**: uniform too, $A / (G\,|y_i|)$ — the uniform window of section 1.
# * **P-trace**: the same total as GRPO, redistributed towards the beginning: token $k$ receives
#   $A \sum_{t \ge k} w_{t,k} / N$. With $\lambda = 1$ the first token would get $H_T$ (the
#   harmonic number) times GRPO's share and the last $1/T$ of it.
# * **S-trace**: the trace only ticks on selected (high-entropy) tokens, so the whole answer's
#   credit lands on the forking tokens (red: those of this answer that made the batch's top 20%
#   by entropy) and the template tokens get exactly zero.
#
# (GSPO and GRPO coincide here because the four answers have the same length; with ragged
# answers GSPO gives each *answer* the same weight, GRPO each *token*.)
#
# The identities behind these pictures, checked here on the same batch:

# %%
N = int(mask.sum())
total = {name: c.sum(-1) for name, c in credit.items()}  # [B] per answer
print("per-answer total credit, GRPO   :", [round(float(x), 6) for x in total["GRPO"]])
print("per-answer total credit, P-trace:", [round(float(x), 6) for x in total["P-trace (lam=0.95)"]])
print("per-answer total credit, S-trace:", [round(float(x), 6) for x in total["S-trace (lam=0.95, q=0.2)"]])
credit_total_diff = float((total["GRPO"] - total["P-trace (lam=0.95)"]).abs().max())
lam1 = token_credit(logp, logp, adv, mask, config=TraceConfig.preset("p_trace", lam=1.0, form="ratio"))
harmonic = sum(1.0 / k for k in range(1, T + 1))
first_ratio = float(lam1[0, 0] / credit["GRPO"][0, 0])
last_ratio = float(lam1[0, -1] / credit["GRPO"][0, -1])
print(f"lam=1, first token / GRPO = {first_ratio:.6f}  (H_{T} = {harmonic:.6f})")
print(f"lam=1, last token  / GRPO = {last_ratio:.6f}  (1/T = {1 / T:.6f})")
unselected_credit = float(credit["S-trace (lam=0.95, q=0.2)"][~selected].abs().max())
print("largest |credit| of an unselected token under S-trace:", unselected_credit)

# %% [markdown]
# ## 4. The clipping difference under the same policy drift
#
# Now off-policy. Eight answers of 40 tokens; the learner has drifted from the sampler by a
# little noise on every token ($\sigma = 0.02$ in log-ratio) plus, in five answers, a **burst**:
# six consecutive tokens whose log-probability moved by $\pm 0.8$ (the learner changed its mind
# about one step of the solution). Same log-probs, same advantages for every member; we count
# the loss terms each keeps (ratio inside its trust region, or on the pessimistic side of it)
# and the tokens that receive any credit.
#
# GSPO is shown twice: with its preset range ($3\cdot10^{-4}$ / $4\cdot10^{-4}$) and with the
# P-trace's range (0.2 / 0.28), so that only the window differs.

# %%
B, T = 8, 40
g = torch.Generator().manual_seed(1)
old = -torch.rand(B, T, generator=g) * 2  # [B, T]
delta = 0.02 * torch.randn(B, T, generator=g)  # [B, T] small drift everywhere
# answer: (first token of the burst, size); answers 4 and 6 drift against their advantage
bursts = {0: (5, +0.8), 1: (18, +0.8), 2: (30, -0.8), 4: (12, -0.8), 6: (25, +0.8)}
for i, (start, size) in bursts.items():
    delta[i, start:start + 6] += size
logp = old + delta
mask = torch.ones(B, T, dtype=torch.bool)
adv = torch.tensor([1.0, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0])  # [B]

compare = {
    "GRPO (0.2/0.2)": TraceConfig.preset("grpo"),
    "P-trace (lam=0.95, 0.2/0.28)": TraceConfig.preset("p_trace", form="ratio"),
    "GSPO (preset 3e-4/4e-4)": TraceConfig.preset("gspo"),
    "GSPO (0.2/0.28)": TraceConfig.preset("gspo", clip_low=0.2, clip_high=0.28),
}
kept, credited = {}, {}
for name, cfg in compare.items():
    out = policy_loss(logp, old, adv, mask, config=cfg)
    r, a = out.trace_ratio, adv[:, None]
    clipped = ((a > 0) & (r > 1 + cfg.clip_high)) | ((a < 0) & (r < 1 - cfg.clip_low))
    kept[name] = ~clipped & mask  # [B, T] loss terms that still carry a gradient
    credited[name] = token_credit(logp, old, adv, mask, config=cfg) != 0  # [B, T]

fig, axes = plt.subplots(len(compare), 1, figsize=(11, 9), sharex=True)
for ax, name in zip(axes, compare):
    ax.imshow(kept[name].double(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i, (start, size) in bursts.items():
        ax.add_patch(plt.Rectangle((start - 0.5, i - 0.5), 6, 1, fill=False, ec="k", lw=1.2))
    ax.set_yticks(range(B), [f"A={float(adv[i]):+.0f}" for i in range(B)], fontsize=7)
    ax.set_title(f"{name}: {int(kept[name].sum())}/{B * T} loss terms kept, "
                 f"{int(credited[name].sum())} tokens credited", fontsize=9)
axes[-1].set_xlabel("token (black boxes: the bursts; green = kept, red = clipped)")
fig.tight_layout()
plt.show()

for name in compare:
    per_answer = kept[name].sum(-1).tolist()
    print(f"{name:30s} kept per answer {per_answer}  total {int(kept[name].sum())}")

# %% [markdown]
# What the picture shows:
#
# * **GSPO** decides per answer. With its preset range the sequence ratio of almost every
#   answer sits outside $[1 - 3\cdot10^{-4}, 1 + 4\cdot10^{-4}]$, so each answer is kept whole
#   (its ratio moved *against* its advantage: the pessimistic side of the clip, answers 4 and 6)
#   or dropped whole. With the 0.2/0.28 range the bursts are averaged over 40 tokens and
#   nothing is clipped at all.
# * **GRPO** clips exactly the burst tokens whose own ratio left $1 \pm 0.2$ on the side of
#   the advantage.
# * **The P-trace** clips a *stretch* of tokens: its trace ratio rises during the burst and
#   decays afterwards, so it cuts from somewhere inside the burst to a few tokens after it —
#   and only in the answers where the burst pushes the ratio out of the region in the
#   direction of the advantage. The rest of each answer keeps its loss terms: partial
#   trust-region preservation. (On this batch it keeps the same 302 terms as GRPO in total —
#   more than GRPO in answers 1 and 2, fewer in answer 0 — but credits all 320 tokens, GRPO 302.)
#
# This is one hand-built batch: it shows *how* each member clips, exactly, and says nothing
# about which one yields the better gradient. That question is measured, with 95% intervals
# over independent batches, in notebook 01 (section 5c).

# %% [markdown]
# ## What you saw
#
# * GSPO's length-normalised sequence ratio is the trace with a uniform whole-answer window;
#   GRPO is the trace with $\lambda = 0$. `policy_loss` reproduces independent GSPO and GRPO
#   implementations to float64 rounding (printed above), clip active or not.
# * On-policy, GRPO and GSPO spread an answer's credit uniformly; the P-trace keeps GRPO's total
#   per answer but front-loads it ($H_T$ / $1/T$ at $\lambda = 1$); the S-trace puts all of it on
#   the high-entropy tokens and exactly zero on the others.
# * Under the same drift, GSPO keeps or drops whole answers, GRPO cuts single tokens and the
#   P-trace cuts a contiguous stretch around each out-of-region burst (one constructed batch:
#   a picture of the mechanism, not a comparison of gradient quality — see notebook 01).
# * All of this is this project's formalisation of the paper's abstract (`docs/ALGORITHMS.md`).

# %%
summary = {
    "max_abs_diff_gspo": max_diff["gspo"],
    "max_abs_diff_grpo": max_diff["grpo"],
    "credit_total_diff_p_trace_vs_grpo": credit_total_diff,
    "lam1_first_token_over_grpo": first_ratio,
    "harmonic_T": harmonic,
    "lam1_last_token_over_grpo": last_ratio,
    "s_trace_max_unselected_credit": unselected_credit,
    "kept_terms": {name: int(k.sum()) for name, k in kept.items()},
    "credited_tokens": {name: int(c.sum()) for name, c in credited.items()},
    "gspo_preset_whole_answers": all(
        bool(k.all() or not k.any()) for k in kept["GSPO (preset 3e-4/4e-4)"]
    ),
    "runtime_s": round(time.perf_counter() - NOTEBOOK_START, 1),
}
print("SUMMARY_JSON " + json.dumps(summary))
