# %% [markdown]
# # 03 — S-trace: entropy selection on real answers
#
# The abstract of *Beyond Uniform Credit Assignment: Selective Eligibility Traces for RLVR*
# (Mou et al., 2026) describes the S-trace as "a sparse eligibility traces mechanism to further
# mitigate variance and achieve fine-grained credit assignment by selectively masking
# low-entropy tokens". The formulas below are **this project's formalisation of that
# sentence** (`docs/ALGORITHMS.md`), not the paper's text.
#
# The trace here is in its **ratio form** (`form="ratio"`, the form the presets first shipped
# with); the `p_trace`/`s_trace` presets now use the weight form, chosen by the credit study
# (`docs/ALGORITHMS.md`, "Trace forms"; section 5e of notebook 01 compares the forms).
#
# $$\tau = \operatorname{quantile}\big(\{H_{i,t} : t \text{ valid}\},\ 1 - q\big), \qquad
#   m_{i,t} = [H_{i,t} \ge \tau],$$
#
# $$z_t = \lambda^{m_t} z_{t-1} + m_t\, \delta_t, \qquad n_t = \lambda^{m_t} n_{t-1} + m_t, \qquad
#   \ell_t = z_t / n_t .$$
#
# $H_{i,t}$ is the entropy of the policy's next-token distribution where answer $i$ emitted
# token $t$. The trace only ticks on the top-$q$ entropy tokens and carries over unchanged
# across the others, so the low-entropy tokens' log-ratios never enter any trace ratio and
# **receive no gradient**. The loss terms themselves stay on every token (`s_trace` preset:
# $\lambda = 0.95$, $q = 0.2$, clip $0.2 / 0.28$).
#
# Everything here runs on the project's embedded tiny Qwen3 policy (`strace_ds.assets.recipes.arithmetic`), trained
# briefly on the synthetic arithmetic task, with the library's own rollout engine and
# log-prob/entropy code.

# %%
import json
import math
import time
from collections import defaultdict

import matplotlib.pyplot as plt
import torch
from matplotlib import colors
from transformers import AutoModelForCausalLM, AutoTokenizer

from strace_ds.losses.advantages import group_advantages
from strace_ds.data.arithmetic import arithmetic_dataset
from strace_ds.data.prompts import build_prompt_ids
from strace_ds.losses import TraceConfig, policy_loss, select_tokens, token_credit
from strace_ds.rewards import grade_answer
from strace_ds.rollout.base import SamplingParams
from strace_ds.rollout.hf import HFRolloutEngine
from strace_ds.model.batch import collate_rollouts
from strace_ds.model.logprobs import answer_logprobs
from strace_ds.assets import default_policy_dir
from strace_ds.model.logprob_kernels import token_logprobs_and_entropy

NOTEBOOK_START = time.perf_counter()
torch.manual_seed(0)
model_dir = default_policy_dir()  # shipped with the package: the same weights everywhere
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
print(model_dir, f"{sum(p.numel() for p in model.parameters()):,} parameters")

# %% [markdown]
# ## 1. Sample real answers
#
# Eight held-out problems, 32 answers each at temperature 1 (the RL sampling distribution),
# from `HFRolloutEngine`. The synthetic task's prompts already carry their instruction, so
# `build_prompt_ids(..., instruction="")`. Each answer is graded with `grade_answer`
# (math-verify on the last `\boxed{}`).

# %%
PROMPTS, POOL = 8, 32
engine = HFRolloutEngine(model_dir, tokenizer=tokenizer, max_batch_size=PROMPTS * POOL)


def sample_pool(seed):
    """The held-out problems of ``seed``, POOL answers to each (sampling seed ``seed``), graded."""
    problems = arithmetic_dataset("test", size=PROMPTS, seed=seed).examples
    prompt_ids = [build_prompt_ids(tokenizer, ex.prompt, instruction="") for ex in problems]
    sampling = SamplingParams(max_new_tokens=40, temperature=1.0, seed=seed)
    gen = engine.generate(prompt_ids, n=POOL, sampling=sampling)
    texts = tokenizer.batch_decode(gen.token_ids, skip_special_tokens=True)
    rewards = torch.tensor([grade_answer(t, problems[i].answer) for t, i in zip(texts, gen.prompt_index)])
    return problems, prompt_ids, gen, texts, rewards


t0 = time.perf_counter()
problems, prompt_ids, gen, texts, rewards = sample_pool(0)  # the pool of sections 1-3 and 5
print(f"{len(texts)} answers in {time.perf_counter() - t0:.0f}s, accuracy {float(rewards.mean()):.2f}")
for i in range(3):
    print(f"  [{int(rewards[i])}] {problems[0].meta['question']} -> {texts[i]!r}")

# %% [markdown]
# ## 2. Token entropies
#
# `collate_rollouts` pads the answers into one batch and `answer_logprobs` runs the policy over
# it, returning the log-prob of every sampled token and the entropy $H_{i,t}$ of the
# distribution it was drawn from (chunked over the vocabulary by `strace_ds.model.logprob_kernels`).

# %%
batch = collate_rollouts(prompt_ids, gen, tokenizer.pad_token_id)
with torch.no_grad():
    logp_pool, entropy_pool = answer_logprobs(model, batch, temperature=1.0)  # [N, R] each
valid = batch.response_mask  # [N, R]
print("max |engine log-prob - trainer log-prob| =",
      f"{float((logp_pool - batch.rollout_logprobs).abs()[valid].max()):.1e}")

H = entropy_pool[valid]
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(H.numpy(), bins=60, log=True)
tau20 = float(torch.quantile(H.double(), 0.8))
ax.axvline(tau20, color="r", label=f"top-20% threshold tau = {tau20:.2f} nats")
ax.set_xlabel("token entropy H (nats)")
ax.set_ylabel("tokens")
ax.legend()
ax.set_title("Most tokens are near-deterministic; a few are forks")
plt.show()

# Which token strings are the forks? Mean entropy and selection rate per string.
per_string = defaultdict(list)
ids = batch.response_ids
for i, t in valid.nonzero().tolist():
    per_string[tokenizer.convert_ids_to_tokens(int(ids[i, t]))].append(float(entropy_pool[i, t]))
stats = sorted(((sum(v) / len(v), sum(h >= tau20 for h in v) / len(v), len(v), s)
                for s, v in per_string.items() if len(v) >= 20), reverse=True)
print(f"{'token':>12} {'mean H':>7} {'selected':>9} {'count':>6}")
for mean_h, sel, n, s in stats[:8] + stats[-4:]:
    print(f"{s!r:>12} {mean_h:7.3f} {sel:9.2f} {n:6d}")

# %% [markdown]
# ## 3. The selected tokens in the text
#
# Each cell is one token of an answer, coloured by its entropy; a red frame marks the tokens the
# S-trace selects ($q = 0.2$, threshold over this whole pool of answers).

# %%
selected_pool, tau = select_tokens(valid, entropy_pool, 0.2)


def token_strip(ax, ids, mask, rows, values, frame=None, cmap="viridis", vmax=None, label=""):
    """One answer per line, one cell per token.  ids, mask, values, frame: [N, R]."""
    vmax = vmax or float(values[mask].abs().max())
    diverging = cmap == "RdBu"
    norm = colors.Normalize(vmin=-vmax if diverging else 0.0, vmax=vmax)
    cm = plt.get_cmap(cmap)
    right = 0.0
    for line, i in enumerate(rows):
        n = int(mask[i].sum())
        x = 0.0
        for t in range(n):  # cell width follows the token's length
            text = tokenizer.convert_ids_to_tokens(int(ids[i, t])).replace("Ġ", " ").replace("Ċ", "\\n")
            width = 0.25 + 0.13 * len(text)
            edge = "red" if frame is not None and frame[i, t] else "white"
            ax.add_patch(plt.Rectangle((x, -line), width, 0.9, fc=cm(norm(float(values[i, t]))),
                                       ec=edge, lw=2 if edge == "red" else 0.5))
            ax.text(x + width / 2, -line + 0.45, text, ha="center", va="center", fontsize=7,
                    color="white" if not diverging and norm(float(values[i, t])) < 0.5 else "black")
            x += width
        right = max(right, x)
    ax.set_xlim(0, right)
    ax.set_ylim(-len(rows) + 0.9, 1.0)
    ax.axis("off")
    plt.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cm), ax=ax, fraction=0.02, label=label)


show = [0, 1, 2, POOL, POOL + 1, 2 * POOL]  # three answers to problem 0, two to 1, one to 2
fig, ax = plt.subplots(figsize=(13, 3.2))
token_strip(ax, ids, valid, show, entropy_pool, frame=selected_pool, label="entropy (nats)")
ax.set_title(f"Token entropy; red frame = selected by S-trace (q = 0.2, tau = {tau:.2f})")
plt.show()

# %% [markdown]
# The forks are where the policy actually chooses: digits of the operands it copies from the
# question and, above all, the digits of the result; the template ("The answer is \boxed{")
# is near-deterministic. The S-trace's credit will land only on the framed tokens.

# %% [markdown]
# ## 4. The quantile $q$: selected fraction and gradient variance
#
# **Selected fraction.** `select_tokens` keeps the tokens at or above the $(1-q)$ quantile, so
# the fraction is $q$ up to ties and interpolation; `policy_loss` reports it as `select/frac`.
#
# **Variance of the gradient estimate.** A training batch is $G = 8$ answers for each of the 8
# prompts. From a pool we resample 20 such batches (8 of the 32 answers per prompt, without
# replacement) and compute each batch's on-policy gradient **by autograd through
# `policy_loss`**. To keep this cheap on CPU the gradient is taken with respect to the output
# layer (the `lm_head` weights, $V \times d$), with the transformer body held fixed: we compute
# the final hidden states once, and the logits, log-probs and entropies from them with
# `token_logprobs_and_entropy`. Two numbers per objective and pool:
#
# * the relative variance $\mathbb{E}\|\hat g - \bar g\|^2 / \|\bar g\|^2$ over batches;
# * the mean cosine between a batch gradient and the **pool gradient of the same objective**
#   (all 32 answers per prompt) — how much of the direction one batch recovers.
#
# Changing $q$ changes the objective (which tokens get credit), so each objective is compared
# with its own pool gradient.
#
# **Repeated over 16 independent pools.** One pool is one draw of the problems and the
# answers, and the numbers move a lot from one draw to the next, so the whole measurement is
# repeated on pools 0–15: pool $s$ has its own 8 held-out problems (`arithmetic_dataset(seed=s)`),
# its own 32 answers per problem (sampling seed $s$) and its own 20 resampled batches; pool 0
# is the one of sections 1–3. Per objective we report the mean over the pools and a 95%
# Student-$t$ interval; a comparison between two objectives is the **paired** difference on
# the same pool and the same batches, with its own interval, and it is a claim only where that
# interval is entirely on one side of 0. 20 batches per pool rather than more: the spread
# between pools (GRPO's relative variance ranges over a factor of about 6) is much larger than
# the error of a pool's 20-batch estimate (doubling to 40 batches moved a pool's value by a
# median 10% when we tried it), so pools buy more precision than batches for the same time.

# %%
W0 = model.lm_head.weight.detach()  # [V, d]


def head_inputs(batch):
    """Final hidden states that predict the answer tokens, [N, R, d]; the body is held fixed."""
    with torch.no_grad():
        body = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids).last_hidden_state  # [N, P+R, d]
    R = batch.response_ids.shape[1]
    return body[:, batch.prompt_len - 1 : batch.prompt_len - 1 + R]


def head_gradient(hidden, batch, rows, adv, config):
    """Ascent direction -d loss / d lm_head.weight for the answers ``rows``, and the loss metrics."""
    W = W0.clone().requires_grad_(True)
    logits = hidden[rows] @ W.T  # [n, R, V]
    logp, ent = token_logprobs_and_entropy(logits, batch.response_ids[rows], chunk_size=4096)
    out = policy_loss(logp, logp.detach(), adv, batch.response_mask[rows], entropy=ent.detach(),
                      config=config)
    (grad,) = torch.autograd.grad(out.loss, W)
    return -grad.reshape(-1), out.metrics


# sanity: the head-only path reproduces the model's own log-probs (pool 0)
check, _ = token_logprobs_and_entropy(head_inputs(batch)[:4] @ W0.T, batch.response_ids[:4])
print("head path vs answer_logprobs:", f"{float((check - logp_pool[:4]).abs()[valid[:4]].max()):.1e}")

# %%
QS = [0.5, 0.3, 0.2, 0.1, 0.05]  # q = 1 selects every token: that is the P-trace line
P_TRACE, EIGHTY = "P-trace (no selection)", "80/20 GRPO (q=0.2, loss on selected)"
objectives = {"GRPO": TraceConfig.preset("grpo"), P_TRACE: TraceConfig.preset("p_trace", form="ratio")}
objectives.update({f"S-trace q={q}": TraceConfig.preset("s_trace", entropy_top_quantile=q, form="ratio")
                   for q in QS})
objectives[EIGHTY] = TraceConfig.preset("highent_grpo")

G, N_RESAMPLE, SEEDS = 8, 20, list(range(16))  # SEEDS: one independent pool each


def resample_batches(rewards, seed):
    """N_RESAMPLE training batches (rows, advantages): G of the POOL answers of every prompt."""
    gen_rows = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(N_RESAMPLE):
        picks = [p * POOL + torch.randperm(POOL, generator=gen_rows)[:G] for p in range(PROMPTS)]
        rows = torch.cat(picks)  # [PROMPTS * G], grouped by prompt
        out.append((rows, group_advantages(rewards[rows], G).advantages))
    return out


def measure_pool(batch, rewards, batches):
    """objective -> rel_var, cos_to_pool and select_frac on one pool; every objective, same batches."""
    hidden = head_inputs(batch)
    advantages_pool = group_advantages(rewards, POOL).advantages  # [N]
    result = {}
    for name, cfg in objectives.items():
        pool_grad, _ = head_gradient(hidden, batch, torch.arange(len(rewards)), advantages_pool, cfg)
        grads, fracs = [], []
        for rows, adv in batches:
            g, m = head_gradient(hidden, batch, rows, adv, cfg)
            grads.append(g)
            fracs.append(m["select/frac"])
        grads = torch.stack(grads)  # [N_RESAMPLE, V * d]
        mean = grads.mean(0)
        result[name] = {
            "rel_var": float(((grads - mean) ** 2).sum(-1).mean() / mean.pow(2).sum()),
            "cos_to_pool": float(torch.nn.functional.cosine_similarity(grads, pool_grad[None], -1).mean()),
            "select_frac": sum(fracs) / len(fracs),
        }
    return result


t0 = time.perf_counter()
per_pool, pool_accuracy = [], []  # per_pool[k][objective] -> the three numbers of pool SEEDS[k]
for seed in SEEDS:
    if seed == 0:  # reuse the pool of sections 1-3
        pool_batch, pool_rewards = batch, rewards
    else:
        _, ids_s, gen_s, _, pool_rewards = sample_pool(seed)
        pool_batch = collate_rollouts(ids_s, gen_s, tokenizer.pad_token_id)
    pool_batches = resample_batches(pool_rewards, seed)
    if seed == 0:
        batches = pool_batches  # section 5 shows the first of these
    per_pool.append(measure_pool(pool_batch, pool_rewards, pool_batches))
    pool_accuracy.append(float(pool_rewards.mean()))
print(f"{len(SEEDS)} pools x {N_RESAMPLE} batches x {len(objectives)} objectives in "
      f"{time.perf_counter() - t0:.0f}s; pool accuracy {min(pool_accuracy):.2f}-{max(pool_accuracy):.2f}")

# %%
# two-sided 95% quantile of Student's t for 1..30 degrees of freedom (no scipy needed)
T975 = dict(enumerate([12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                       2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                       2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042], start=1))


def interval(values):
    """Mean and 95% Student-t interval over independent pools: (mean, low, high)."""
    x = torch.as_tensor(values, dtype=torch.float64)
    half = T975[len(x) - 1] * float(x.std()) / len(x) ** 0.5
    return float(x.mean()), float(x.mean()) - half, float(x.mean()) + half


def fmt(stat, digits=4, sign=""):
    m, lo, hi = stat
    return f"{m:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def over_pools(name, key):
    return [pool[name][key] for pool in per_pool]


short = {name: name.replace("S-trace ", "S ").replace(" (no selection)", "").split(" (")[0]
         for name in objectives}
print("relative variance per pool")
print("pool " + "".join(f"{short[name]:>11s}" for name in objectives))
for seed, pool in zip(SEEDS, per_pool):
    print(f"{seed:4d} " + "".join(f"{pool[name]['rel_var']:11.4f}" for name in objectives))

KEYS = ("rel_var", "cos_to_pool", "select_frac")
stats = {key: {name: interval(over_pools(name, key)) for name in objectives} for key in KEYS}
print(f"mean [95% interval] over {len(SEEDS)} pools of {N_RESAMPLE} batches")
print(f"{'objective':38s} {'select/frac':>11s}  {'relative variance':>26s}  {'cosine to pool':>26s}")
for name in objectives:
    print(f"{name:38s} {stats['select_frac'][name][0]:11.3f}  {fmt(stats['rel_var'][name]):>26s}  "
          f"{fmt(stats['cos_to_pool'][name]):>26s}")

# The comparisons the prose makes: A - B on the same pool and the same batches.
PAIRS = {
    "S-trace q=0.2 - P-trace": ("S-trace q=0.2", P_TRACE),
    "S-trace q=0.1 - P-trace": ("S-trace q=0.1", P_TRACE),
    "S-trace q=0.2 - GRPO": ("S-trace q=0.2", "GRPO"),
    "S-trace q=0.1 - GRPO": ("S-trace q=0.1", "GRPO"),
    "80/20 GRPO - GRPO": (EIGHTY, "GRPO"),
    "S-trace q=0.05 - S-trace q=0.2": ("S-trace q=0.05", "S-trace q=0.2"),
    "P-trace - GRPO": (P_TRACE, "GRPO"),
}
diffs = {key: {label: interval([x - y for x, y in zip(over_pools(a, key), over_pools(b, key))])
               for label, (a, b) in PAIRS.items()} for key in ("rel_var", "cos_to_pool")}
# relative variance spans a factor of ~10 across pools: the paired ratio A / B (geometric mean)
ratios = {label: tuple(math.exp(v) for v in interval(
              [math.log(x / y) for x, y in zip(over_pools(a, "rel_var"), over_pools(b, "rel_var"))]))
          for label, (a, b) in PAIRS.items()}
print(f"\npaired over the {len(SEEDS)} pools: mean [95% interval]")
lower = {label: sum(x < y for x, y in zip(over_pools(a, "rel_var"), over_pools(b, "rel_var")))
         for label, (a, b) in PAIRS.items()}  # pools where A's relative variance is the lower
print(f"{'A - B':32s} {'rel. variance A - B':>28s}  {'A / B':>18s}  {'A lower':>7s}  {'cosine A - B':>28s}")
for label in PAIRS:
    print(f"{label:32s} {fmt(diffs['rel_var'][label], sign='+'):>28s}  {fmt(ratios[label], 2):>18s}  "
          f"{lower[label]:4d}/{len(SEEDS)}  {fmt(diffs['cos_to_pool'][label], sign='+'):>28s}")

# %%
s_names = [f"S-trace q={q}" for q in QS]
fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
axes[0].plot([1.0] + QS, [1.0] + [stats["select_frac"][n][0] for n in s_names], "o-",
             label="measured select/frac (mean over pools)")
axes[0].plot([0, 1], [0, 1], "k:", label="y = q")
axes[0].set_xlabel("entropy_top_quantile q")
axes[0].set_ylabel("fraction of valid tokens selected")
axes[0].legend()
for ax, key, label in ((axes[1], "rel_var", "relative variance of a batch gradient"),
                       (axes[2], "cos_to_pool", "cosine(batch gradient, pool gradient)")):
    line = [stats[key][P_TRACE]] + [stats[key][n] for n in s_names]
    mean = [m for m, _, _ in line]
    ax.errorbar([1.0] + QS, mean, yerr=[[m - lo for m, lo, _ in line], [hi - m for m, _, hi in line]],
                fmt="o-", capsize=3, label="S-trace (q = 1: the P-trace)")
    for ref, color, ls in (("GRPO", "k", "--"), (EIGHTY, "g", "-.")):
        m, lo, hi = stats[key][ref]
        ax.axhline(m, ls=ls, color=color, label=ref)
        ax.axhspan(lo, hi, color=color, alpha=0.1)
    ax.set_xlabel("entropy_top_quantile q")
    ax.set_ylabel(label)
axes[2].legend(fontsize=7)
fig.suptitle(f"Mean and 95% interval over {len(SEEDS)} pools, {N_RESAMPLE} resampled batches of "
             f"{PROMPTS} prompts x {G} answers each (output-layer gradient)")
fig.tight_layout()
plt.show()

fig, axes = plt.subplots(1, 2, figsize=(13, 3.2), sharey=True)
for ax, key, label in ((axes[0], "rel_var", "relative variance, A - B"),
                       (axes[1], "cos_to_pool", "cosine to pool, A - B")):
    for y, lab in enumerate(PAIRS):
        m, lo, hi = diffs[key][lab]
        color = "k" if lo < 0 < hi else ("tab:red" if (m > 0) == (key == "rel_var") else "tab:blue")
        ax.errorbar([m], [y], xerr=[[m - lo], [hi - m]], fmt="o", color=color, capsize=3)
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_xlabel(label)
axes[0].set_yticks(range(len(PAIRS)), list(PAIRS))
axes[0].invert_yaxis()
fig.suptitle("Paired differences, mean and 95% interval over pools (black: interval contains 0; "
             "blue: A better; red: A worse)", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# How to read it (numbers: mean [95% interval] over the 16 pools, from the tables printed
# above; "A lower" counts the pools where A's relative variance is below B's; a difference is
# a claim only where its whole interval is on one side of 0):
#
# * **GRPO** has the lowest relative variance, 0.020 [0.014, 0.025], and the highest cosine to
#   its pool gradient, 0.995 [0.994, 0.997]. The **P-trace without selection** is above it:
#   +0.028 [+0.016, +0.040] relative variance (2.3 [1.9, 2.7] times GRPO's, higher on all 16
#   pools), cosine −0.015 [−0.021, −0.009]. Its front-loaded credit puts large weights on the
#   first tokens of every answer, whatever they are. It is not the most variable objective,
#   though: the S-trace at $q$ = 0.5, 0.3 and 0.2 is at the same level (means 0.048–0.050
#   against its 0.048).
# * **Selecting the top 20%** ($q = 0.2$, the `s_trace` preset) **does not lower the
#   variance** here: S-trace $q=0.2$ minus P-trace is +0.002 [−0.006, +0.010] (ratio
#   1.05 [0.93, 1.19], lower on only 5 of 16 pools) and the cosine difference is
#   −0.002 [−0.007, +0.002]: no difference detectable either way. It stays above GRPO,
#   +0.030 [+0.017, +0.043]: the opposite of "GRPO's level or below".
# * **The top 10%** ($q = 0.1$) is lower than the P-trace: −0.015 [−0.025, −0.005]
#   (0.67 [0.55, 0.82] times, lower on 15 of 16 pools), with a higher cosine,
#   +0.007 [+0.003, +0.011]; but it is still above GRPO, +0.013 [+0.004, +0.022].
# * **$q = 0.05$ against $q = 0.2$**: +0.008 [−0.032, +0.049] (ratio 0.77 [0.56, 1.05]),
#   cosine −0.000 [−0.016, +0.015]: no difference detectable, so "too sparse" is not shown by
#   this measure. $q = 0.05$ is the lower of the two on 13 of 16 pools; the interval is wide
#   because of pool 14, where its relative variance is 0.40 against 0.03–0.11 for every other
#   objective: a handful of selected tokens carry the whole gradient there.
# * **80/20 GRPO** (GRPO's loss on the selected 20% only) is GRPO for practical purposes:
#   relative variance −0.0003 [−0.0005, −0.0001] (1% lower; the interval excludes 0 but the
#   difference is negligible), cosine +0.0002 [+0.0001, +0.0003]. That is what one expects if
#   the unselected near-deterministic tokens contribute almost nothing to the gradient anyway
#   ($\partial \log p(y) / \partial\,\mathrm{logits} = e_y - p \approx 0$ when
#   $p(y) \approx 1$). In the trace, selection does more than drop those tokens: their loss
#   terms still pass credit back through the trace to the earlier selected tokens (section 5),
#   which is why it moves the trace's numbers (down for $q = 0.1$, either way per pool for
#   $q = 0.2$) where it leaves GRPO's almost unchanged.
#
# Caveats: one small policy, the output-layer gradient only, on-policy batches (the trace
# ratios are all 1 here, so what differs between the objectives is only where the credit
# goes); batches are resampled from a finite pool of 32 answers per prompt; 7 comparisons on
# two measures at 95% each, so about one of them may exclude 0 by chance.

# %% [markdown]
# ## 5. Where S-trace puts the credit
#
# One training batch, on-policy. The same two answers under GRPO and under the S-trace: GRPO
# gives every token of an answer the same credit $A/N$; the S-trace hands the answer's credit
# to its selected (forking) tokens and exactly zero to the others.

# %%
rows, adv = batches[0]
sub = batch.rows(rows)
with torch.no_grad():
    logp_b, ent_b = answer_logprobs(model, sub)
credit = {name: token_credit(logp_b, logp_b, adv, sub.response_mask, entropy=ent_b,
                             config=TraceConfig.preset(name, form="ratio"))
          for name in ("grpo", "s_trace")}
sel_b, _ = select_tokens(sub.response_mask, ent_b, 0.2)
pos, neg = int(torch.nonzero(adv > 0)[0]), int(torch.nonzero(adv < 0)[0])
for i in (pos, neg):
    print(f"answer {i}: A = {float(adv[i]):+.2f}: "
          f"{tokenizer.decode(sub.response_ids[i][sub.response_mask[i]])!r}")

bound = float(max(c[[pos, neg]].abs().max() for c in credit.values()))
fig, axes = plt.subplots(2, 1, figsize=(13, 3.2))
for ax, name in zip(axes, credit):
    token_strip(ax, sub.response_ids, sub.response_mask, [pos, neg], credit[name],
                frame=sel_b if name == "s_trace" else None,
                cmap="RdBu", vmax=bound, label="credit")
    ax.set_title(f"{name}: credit = -dL/dlogp (blue pushed up, red pushed down)", fontsize=9)
fig.tight_layout()
plt.show()

selected_credit_share = float(credit["s_trace"][sel_b].abs().sum() / credit["s_trace"].abs().sum())
unselected_credit = float(credit["s_trace"][~sel_b & sub.response_mask].abs().max())
print(f"share of |credit| on selected tokens: S-trace {selected_credit_share:.3f}, "
      f"GRPO {float(credit['grpo'][sel_b].abs().sum() / credit['grpo'].abs().sum()):.3f}")
print("largest |credit| of an unselected token under S-trace:", unselected_credit)

# %% [markdown]
# ## What you saw
#
# * The tiny policy's answers are mostly near-deterministic tokens; a minority — operands,
#   operation, result digits — carry the entropy. The S-trace selection ($q = 0.2$) picks those.
# * The selected fraction follows $q$ (`select/frac`).
# * Gradient variance, over 16 independent pools (mean [95% interval] of the paired
#   difference in relative variance): the preset's selection ($q = 0.2$) does **not** lower
#   the variance of the trace's output-layer gradient below the unselected P-trace's,
#   +0.002 [−0.006, +0.010], and does not change its agreement with the pool gradient,
#   −0.002 [−0.007, +0.002]: no difference detectable. Both stay above GRPO (S-trace
#   $q=0.2$ minus GRPO +0.030 [+0.017, +0.043]), the opposite of "GRPO's level or below".
#   Only the sparser $q = 0.1$ is lower than the P-trace, −0.015 [−0.025, −0.005], and it is
#   still above GRPO. $q = 0.05$ is not distinguishable from $q = 0.2$ (+0.008
#   [−0.032, +0.049]), so "too sparse" is not shown either. The 80/20 GRPO baseline is GRPO
#   to within 1%. The test suite checks these intervals from the summary below.
# * Credit: GRPO spreads an answer's advantage evenly over its tokens; the S-trace puts all of
#   it on the selected forking tokens and exactly zero elsewhere.
# * The selection rule and the trace are this project's formalisation of the paper's abstract
#   (`docs/ALGORITHMS.md`).

# %%
def ci(stat, digits=6):
    """[mean, low, high] of a 95% interval, for SUMMARY_JSON."""
    return [round(v, digits) for v in stat]


summary = {
    "accuracy": float(rewards.mean()),
    "tau_q0.2": tau,
    "pools": len(SEEDS),
    "n_resample": N_RESAMPLE,
    # mean over the pools; the worst pool's |select/frac - q| next to it
    "select_frac": {q: stats["select_frac"][f"S-trace q={q}"][0] for q in QS},
    "select_frac_max_abs_error": max(abs(pool[f"S-trace q={q}"]["select_frac"] - q)
                                     for pool in per_pool for q in QS),
    # [mean, low, high]: 95% Student-t interval over the pools
    "rel_var": {name: ci(v) for name, v in stats["rel_var"].items()},
    "cos_to_pool": {name: ci(v) for name, v in stats["cos_to_pool"].items()},
    # paired over the pools (same pool, same batches): A - B, and A / B for rel_var
    "rel_var_diff": {label: ci(v) for label, v in diffs["rel_var"].items()},
    "cos_to_pool_diff": {label: ci(v) for label, v in diffs["cos_to_pool"].items()},
    "rel_var_ratio": {label: ci(v) for label, v in ratios.items()},
    "s_trace_selected_credit_share": selected_credit_share,
    "s_trace_max_unselected_credit": unselected_credit,
    "runtime_s": round(time.perf_counter() - NOTEBOOK_START, 1),
}
print("SUMMARY_JSON " + json.dumps(summary))
