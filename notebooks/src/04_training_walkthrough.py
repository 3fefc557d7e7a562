# %% [markdown]
# # 04 — A training run, end to end
#
# This notebook runs the project's trainer — DeepSpeed ZeRO-3 (a single rank here, on CPU), the
# in-process rollout engine, math-verify rewards, the trace loss family — on the **embedded
# default**: the tiny Qwen3 policy (`strace_ds.assets.recipes.arithmetic`) on the synthetic arithmetic task. It
# trains GRPO and the S-trace with the same seed and the same budget, reads the TensorBoard
# event files back and plots what the trainer logged. At the end: the same run pointed at a
# real model, a real dataset and an SGLang server.
#
# The P-trace/S-trace losses are **this project's formalisation of the paper's abstract**
# (Mou et al., 2026; `docs/ALGORITHMS.md`), not the paper's text. The `s_trace` preset is in the
# weight form: GRPO on each batch's first update, a bounded historical weight on the later ones.
#
# The budget is deliberately tiny (6 steps of 16 prompts x 4 answers) so that the notebook runs
# in a few minutes on a laptop CPU: it shows the machinery and the metrics, not a converged run,
# and — one run per loss, one seed — nothing about which loss is better (section 3).

# %%
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import strace_ds
from strace_ds.config import TrainConfig
from strace_ds.train.loop import run

NOTEBOOK_START = time.perf_counter()
REPO = Path(strace_ds.__file__).resolve().parents[1]
WORK = Path(tempfile.mkdtemp(prefix="strace_ds_nb04_"))  # run outputs: outside the repository
print("run outputs under", WORK)

# %% [markdown]
# ## 1. One config, two losses
#
# `TrainConfig` is the single typed config behind the CLI (`scripts/train.py`), YAML files and
# notebooks; everything not set here keeps its default (learning rate, clip ranges of the
# preset, mini-batches, ...). `run(config)` builds every component, trains, evaluates on
# held-out problems at the start and the end, checkpoints, and writes TensorBoard scalars to
# `<log_dir>/<run_name>`.

# %%
def config_for(loss: str) -> TrainConfig:
    return TrainConfig(
        loss=loss,
        steps=6,
        prompts_per_step=16,
        group_size=4,
        eval_size=50,
        seed=0,
        run_name=loss,
        log_dir=str(WORK / "runs"),
        output_dir=str(WORK / "outputs"),
        ds_config=str(REPO / "ds_configs" / "zero3.json"),
        export=False,  # no Hugging Face export of the final policy for a demo
    )


print(config_for("s_trace").trace_config())

# %%
final, seconds = {}, {}
for loss in ("grpo", "s_trace"):
    t0 = time.perf_counter()
    final[loss] = run(config_for(loss))
    seconds[loss] = time.perf_counter() - t0
    print(f"{loss}: {seconds[loss]:.0f}s, last step reward {final[loss]['reward/mean']:.3f}")

# %% [markdown]
# ## 2. Read the event files back
#
# The same files `tensorboard --logdir <log_dir>` would show. `EventAccumulator` loads every
# scalar series of a run; each event has a `step` and a `value`.

# %%
def load_scalars(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0 = keep everything
    acc.Reload()
    return {tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
            for tag in acc.Tags()["scalars"]}


scalars = {loss: load_scalars(WORK / "runs" / loss) for loss in final}
print(f"{len(scalars['s_trace'])} scalar tags, e.g.:")
for tag in sorted(scalars["s_trace"])[:12]:
    print("  ", tag)

# %%
PANELS = [
    ("reward/mean", "mean reward of the step's answers"),
    ("response/length_mean", "answer length (tokens)"),
    ("policy/clip_frac_high", "clip fraction, upper side (A > 0)"),
    ("policy/clip_frac_low", "clip fraction, lower side (A < 0)"),
    ("select/frac", "fraction of tokens selected"),
    ("policy/approx_kl", "KL(old || new) per token, k3"),
]
fig, axes = plt.subplots(2, 3, figsize=(14, 6))
for ax, (tag, title) in zip(axes.flat, PANELS):
    for loss, series in scalars.items():
        if tag in series:
            ax.plot(*series[tag], "o-", label=loss)
    ax.set_title(f"{tag}\n{title}", fontsize=9)
    ax.set_xlabel("step")
axes[0, 0].legend()
fig.tight_layout()
plt.show()

for loss, series in scalars.items():
    acc = series.get("eval/accuracy", ([], []))[1]
    cfg = config_for(loss)
    print(f"{loss:8s} held-out accuracy (avg@{cfg.eval_k}, temperature {cfg.eval_temperature:g}, "
          f"{cfg.eval_size} problems) at start and end: {[round(a, 3) for a in acc]}")

# %% [markdown]
# What each panel means (the trainer logs many more; `tensorboard --logdir` shows them all):
#
# | tag | meaning |
# |---|---|
# | `reward/mean` | mean reward of the answers sampled at that step (1 = correct) |
# | `response/length_mean` | mean answer length in tokens |
# | `policy/clip_frac_high` / `_low` | share of loss tokens whose (trace) ratio was clipped, per side |
# | `select/frac` | share of the step's loss tokens (all ranks) the S-trace selected (1 for GRPO: no selection) |
# | `policy/approx_kl` | how far the updates moved the policy from the sampler, per token |
# | `eval/accuracy` | held-out accuracy (avg@4, temperature 1) at the start and the end of the run |
#
# `select/frac` sits at 0.2 for the S-trace: the top-20% entropy tokens of the step. The
# selection is made **once per training step**: the scoring pass that recomputes the old
# log-probs (the proximal policy, before any update) also returns the token entropies, and one
# threshold $\tau$ — the 80% quantile of those entropies over all ranks' loss tokens, logged as
# `select/entropy_threshold` — selects the tokens with $H \ge \tau$. Every mini- and
# micro-batch of the step uses that same selection, so it depends neither on
# `micro_batch_size` nor on the number of ranks (`docs/ALGORITHMS.md`, "Selection"). The clip
# fractions are small: each step makes two updates, each on half of its rollouts, and only the
# second one sees ratios that differ from 1. With `image_every=N` the trainer also draws one
# answer's per-token credit every N steps (TensorBoard's Images tab).

# %% [markdown]
# ## 3. What this run says — and what it does not
#
# **This run says nothing about which loss is better.** It is one run per loss with one seed,
# and six steps of 64 answers: the step-to-step noise of `reward/mean` alone is of the order of
# $\sqrt{p(1-p)/64} \approx 0.05$, and the held-out accuracy (avg@4 on 50 problems) has a
# standard error of up to $\sqrt{p(1-p)/50} \approx 0.07$ (the bound when a problem's four
# samples always agree). Whichever curve or end accuracy printed above is higher, the
# difference is not a measurement of the methods, and one run gives no spread to judge it by.
# The comparison of GRPO and S-trace on this task over several seeds, with 95% intervals of
# the paired difference, is in `docs/RESULTS.md`, "Results on the embedded default"
# (produced by `benchmarks/default_seeds.py`); the comparison that matters (real models,
# maths benchmarks) needs GPUs.
#
# Use this run to check the plumbing and the metrics. Two numbers deserve a look before any long
# run: the reward trend and `policy/approx_kl`. If the reward falls while the KL per update is
# well above ~0.01 and the clip fractions are near zero, the optimizer's steps are too large for
# this policy (the trust region only clips ratios *after* they have moved) — lower `--lr`
# before anything else. The verdict printed below is that rule of thumb applied to one noisy
# run, per loss: a hint, not a test.

# %%
diagnosis = {}
for loss, series in scalars.items():
    reward = series["reward/mean"][1]
    kl = series["policy/approx_kl"][1]
    diagnosis[loss] = {"reward_first": reward[0], "reward_last": reward[-1],
                       "reward_mean_last3": sum(reward[-3:]) / 3,
                       "approx_kl_mean": sum(kl) / len(kl)}
    verdict = ("reward fell and KL/token > 0.01: steps look too large, try a smaller --lr"
               if diagnosis[loss]["reward_mean_last3"] < reward[0] and diagnosis[loss]["approx_kl_mean"] > 0.01
               else "no sign of oversized steps")
    print(f"{loss:8s} reward {reward[0]:.3f} -> {reward[-1]:.3f} (mean of last 3: "
          f"{diagnosis[loss]['reward_mean_last3']:.3f}), mean approx_kl {diagnosis[loss]['approx_kl_mean']:.4f}: {verdict}")

# %% [markdown]
# ## 4. The same run on a real model, a real dataset and SGLang
#
# Every `TrainConfig` field is also a CLI flag of `scripts/train.py` (`--field_name` or
# `--field-name`). On a GPU node, the embedded default becomes a real run by naming the model and
# the dataset (the columns holding the question and the gold answer or a `\boxed{}` solution):
#
# ```bash
# deepspeed --num_gpus 8 scripts/train.py --ds_config ds_configs/zero3.json \
#     --loss s_trace \
#     --model Qwen/Qwen3-1.7B \
#     --dataset DigitalLearningGmbH/MATH-lighteval --prompt_column problem --answer_column solution \
#     --eval_dataset math500 --max_new_tokens 4096 --prompts_per_step 128 --group_size 8 \
#     --lr 1e-6 --run_name s_trace-qwen3-1.7b
# ```
#
# Rollouts from an SGLang server instead of the in-process engine: start the server, then point
# the trainer at it (it checks `/health` before the first step and pushes new weights after
# every step):
#
# ```bash
# python -m sglang.launch_server --model-path Qwen/Qwen3-1.7B --port 30000
# deepspeed --num_gpus 8 scripts/train.py --ds_config ds_configs/zero3.json \
#     --model Qwen/Qwen3-1.7B --dataset DigitalLearningGmbH/MATH-lighteval \
#     --prompt_column problem --answer_column solution \
#     --rollout sglang --sglang-url http://localhost:30000
# ```
#
# and watch it with `tensorboard --logdir runs/`. The same run is written down as a named config,
# `configs/qwen3_1p7b_math.yaml` (`deepspeed --num_gpus 8 scripts/train.py --config
# configs/qwen3_1p7b_math.yaml`); from Python it loads with overrides, here the SGLang server —
# built and validated, **not run** (that needs GPUs, the model download and the server):

# %%
real = TrainConfig.from_file(
    REPO / "configs" / "qwen3_1p7b_math.yaml",
    rollout="sglang",
    sglang_url="http://localhost:30000",
    ds_config=str(REPO / "ds_configs" / "zero3.json"),
)
real.validate(world_size=8)  # the size checks the launcher would run on 8 GPUs
print(real.name, real.trace_config())

# %% [markdown]
# ## 5. Off-policy and asynchronous training
#
# `max_staleness=K` generates the answers of step t with policy version `max(0, t - 1 - K)`
# in a background thread while the earlier steps train; `epochs` passes over each step's
# rollouts; `behaviour_correction` weights each token for the gap between the policy that
# sampled it and the proximal one (`docs/TRAINING.md`, "Off-policy and asynchronous training"). The same
# fields are flags (`--max_staleness 1`) and YAML keys (`rollouts: {max_staleness: 1}`).

# %%
stale_config = config_for("s_trace")
stale_config.run_name, stale_config.steps, stale_config.eval_every = "s_trace-k1", 3, -1
stale_config.max_staleness, stale_config.epochs = 1, 2
stale_config.behaviour_correction = "trace"
stale_config.validate()
stale_last = run(stale_config)
stale = load_scalars(WORK / "runs" / stale_config.run_name)
staleness = stale["rollout/staleness_max"][1]
print("staleness per step:", staleness,
      "| behaviour KL per step:", [f"{v:.1e}" for v in stale["behaviour/kl"][1]])

# %% [markdown]
# ## What you saw
#
# * `run(TrainConfig(...))` trains the embedded tiny policy with DeepSpeed ZeRO-3 on CPU, for
#   GRPO and the S-trace alike; only `loss=` differs.
# * The trainer's TensorBoard scalars (reward, length, clip fractions, selected fraction, KL,
#   held-out accuracy) can be read back with `EventAccumulator` and plotted; the S-trace
#   selects 20% of the tokens (one entropy threshold per step, from the scoring pass, over all
#   ranks), GRPO all of them.
# * One six-step run per loss checks plumbing; it shows nothing about which loss is better (for
#   that: the multi-seed results of `docs/RESULTS.md`). Read the reward trend together with
#   `policy/approx_kl` before a long run (section 3 prints the verdict for this run).
# * The real run is the same config with `--model`, `--dataset` (+ columns) and, optionally,
#   `--rollout sglang --sglang-url`.

# %%
REQUIRED_TAGS = ["reward/mean", "reward/accuracy", "response/length_mean", "policy/clip_frac_high",
                 "policy/clip_frac_low", "select/frac", "policy/approx_kl", "eval/accuracy"]
summary = {
    "seconds": seconds,
    "tags_present": {loss: [t for t in REQUIRED_TAGS if t in s] for loss, s in scalars.items()},
    "required_tags": REQUIRED_TAGS,
    "steps_logged": {loss: len(s["reward/mean"][0]) for loss, s in scalars.items()},
    "rewards": {loss: s["reward/mean"][1] for loss, s in scalars.items()},
    "select_frac_s_trace": scalars["s_trace"]["select/frac"][1],
    "eval_accuracy": {loss: s.get("eval/accuracy", ([], []))[1] for loss, s in scalars.items()},
    "diagnosis": diagnosis,
    "all_finite": all(math.isfinite(v) for s in scalars.values() for t in REQUIRED_TAGS
                      for v in s.get(t, ([], []))[1]),
    "runtime_s": round(time.perf_counter() - NOTEBOOK_START, 1),
    "async_staleness": staleness,
    "async_behaviour_kl": stale["behaviour/kl"][1],
}
shutil.rmtree(WORK, ignore_errors=True)  # the run outputs were only needed for this notebook
print("SUMMARY_JSON " + json.dumps(summary))
