"""The credit-assignment study: when do the traces beat GRPO, with intervals over seeds.

    python -m benchmarks.credit_study --study presets       # the first study (cached runs reused)
    python -m benchmarks.credit_study --study forms         # the trace forms, tuned rates
    python -m benchmarks.credit_study --study long          # a second task shape
    python -m benchmarks.credit_study --study presets --phase sweep   # lam x q sweep of s_trace
    python -m benchmarks.credit_study --report-only         # tables + figures from the cache
    python -m benchmarks.credit_study --smoke --work DIR    # tiny sizes, for the tests

Task: the chain task (:mod:`strace_ds.data.chain`, ``--task``; by default long answers of ~100
tokens whose reward hinges on three results), trained from the task shape's shipped policy
(:mod:`strace_ds.assets.recipes.chain`, sampled accuracy ~25% on the default shape) with
``scripts/train.py`` and ``ds_configs/zero3.json``, the in-process engine, one thread per run,
``--jobs`` runs at a time.

Four studies (``STUDIES``, ``--study``; ``--task``, ``--presets``, ``--regimes`` and ``--tune_lrs``
override them). A method is a loss preset or ``preset@form``, a trace preset in another form
(``--form``: ratio, gate, weight; ``docs/ALGORITHMS.md`` "Trace forms").

* ``presets``: the five presets as first shipped (trace presets in the ratio form), all at
  ``--lr``, regimes on-policy, off-policy and stale; with the gradient probe and the sweep.
* ``ratio``: the ratio form with four updates per batch at the rate the forms study picked for
  every method (not tuned itself), beside GRPO's runs at that rate.
* ``forms``: GRPO and the trace presets in the gate and weight forms. Each method's learning
  rate is picked from ``--tune_lrs`` on ``--tune_seeds`` (never among ``--seeds``) in
  ``--tune_regime`` by the mean held-out avg@k of the last two evaluations, then used in every
  regime: two and four updates per batch and stale answers with the token correction. One
  update per batch is not run again: there the weight form is GRPO exactly and the gate is the
  ratio form exactly (the first study's on-policy cells).
* ``long``: the headline cells on a second task shape, ``chain:decisive=5,filler=2`` (five
  decisive results, answers of ~185 tokens, its own shipped policy): GRPO and the presets' form
  (weight) with two and four updates per batch, at the rate the forms study picked for every
  method (not tuned on this task).

Regimes (``REGIMES``, updates per batch in ``UPDATES``):

* ``on_policy``: one update per batch (``--mini_batches 1``);
* ``updates_2``: two mini-batches, one epoch (two updates per batch);
* ``off_policy``: two mini-batches x two epochs, four updates per batch (the ratio moves
  away from 1, which is where traces and clipping differ; 4 x 2 updates at 2e-4 made
  GRPO collapse in a calibration run);
* ``stale``: ``--max_staleness 2`` (answers come from the policy two versions back);
* ``stale_token``: the same with ``--behaviour_correction token`` (per-token importance weight
  from the sampling policy to the proximal one, truncated at 2).

Per run: held-out avg@k and pass@k (``--eval_size`` problems, k = ``--eval_k``) every
``--eval_every`` steps, and per step the training reward, answer length, clip fractions and
selected-token share. Derived per run: steps and generated tokens until held-out avg@k first
reaches ``start + --threshold_gain`` (linear interpolation between evaluations; runs that never
reach it are censored at the last step and counted), final avg@k and pass@k.
Every figure is a mean over seeds with a percentile-bootstrap 95% interval; comparisons with
GRPO resample the seeds paired (seed s of every preset sees the same prompts in the same
order and the same held-out problems).

Phase ``grad``: gradient variance and cosine to a large-batch gradient per preset
(``credit_gradients.gradient_probe``) at two checkpoints: the warm start, and the policy after
the GRPO on-policy run of seed 0 (exported by that run).

Phase ``sweep``: ``s_trace`` with ``lam`` x ``entropy_top_quantile`` on-policy, and each
``lam`` off-policy at ``--sweep_off_policy_qs`` (where ``lam`` matters most: the traces collapse
there), over ``--sweep_seeds``: final avg@k, training reward, clip fraction, selected share.

Each finished run is one JSON file in ``<work>/cache`` named by (task, regime, preset, seed)
and a hash of every flag that changes it (sizes, policy weights), so the study resumes and
extends; ``--report-only`` never trains. Outputs in ``<work>``: ``results.md`` (tables, one
part per study), ``credit_study.png`` and ``credit_study_forms.png`` (held-out accuracy
against answers generated, sample efficiency, and against answer tokens generated, token
efficiency; one column per regime, bands = intervals) and ``summary.json`` (every derived
number per study, read by notebook 05). The committed study lives in
``benchmarks/credit_study/`` (the default ``--work``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.bench_async import train

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "benchmarks" / "credit_study"
STUDIES: dict[str, dict] = {
    # the five presets as first shipped (the ratio form), one learning rate for all
    "presets": {"presets": ("grpo", "highent_grpo", "gspo", "p_trace@ratio", "s_trace@ratio"),
                "regimes": ("on_policy", "off_policy", "stale"), "tune_lrs": ()},
    # the trace forms against GRPO, each at its own tuned rate, 2 / 4 updates per batch and
    # stale answers with the token correction (one update per batch: the weight form is GRPO
    # and the gate is the ratio form: docs/ALGORITHMS.md, "Identities the tests prove")
    "forms": {"presets": ("grpo", "p_trace@gate", "s_trace@gate", "p_trace@weight",
                          "s_trace@weight"),
              "regimes": ("updates_2", "off_policy", "stale_token"),
              "tune_lrs": (1e-4, 2e-4, 4e-4), "check_lams": (0.5, 0.99)},
    # the ratio form at the rate every method of the forms study picked: is its collapse with
    # four updates per batch the rate's? (not tuned itself; GRPO's runs are the forms study's)
    "ratio": {"presets": ("grpo", "p_trace@ratio", "s_trace@ratio"), "regimes": ("off_policy",),
              "tune_lrs": (), "lr": 1e-4},
    # the headline cells on a second task shape: five decisive results per answer, ~185 tokens
    # (its own shipped policy), the presets' form at the rate the forms study picked for all
    "long": {"task": "chain:decisive=5,filler=2", "max_new_tokens": 208,
             "presets": ("grpo", "p_trace@weight", "s_trace@weight"),
             "regimes": ("updates_2", "off_policy"), "tune_lrs": (), "lr": 1e-4},
}  # fmt: skip
"""The committed studies: methods (a preset, or preset@form for ``--form``), regimes, and the
learning-rate grid each method is tuned on (empty: every method at the study's ``lr``, else at
``--lr``); optionally the task and answer cap (``--task``, ``--max_new_tokens`` otherwise) and
``check_lams``: other ``lam`` values of the trace methods, run like the tuning runs at each
method's picked rate (the lam check; the grid keeps the presets' ``lam``)."""
DEFAULT_TASK = "chain"
DEFAULT_MAX_NEW_TOKENS = 144
DEFAULT_LR = 2e-4
REGIMES: dict[str, list[str]] = {
    "on_policy": ["--mini_batches", "1", "--epochs", "1"],
    "updates_2": ["--mini_batches", "2", "--epochs", "1"],
    "off_policy": ["--mini_batches", "2", "--epochs", "2"],
    "stale": ["--mini_batches", "1", "--epochs", "1", "--max_staleness", "2"],
    "stale_token": ["--mini_batches", "1", "--epochs", "1", "--max_staleness", "2",
                    "--behaviour_correction", "token"],
}  # fmt: skip
UPDATES = {"on_policy": 1, "updates_2": 2, "off_policy": 4, "stale": 1, "stale_token": 1}
"""Optimizer updates per batch of answers in each regime."""
TUNE_LRS = (1e-4, 2e-4, 4e-4)
SWEEP_LAMS = (0.0, 0.5, 0.9, 0.95, 0.99)
SWEEP_QS = (0.1, 0.2, 0.5)
STEP_KEYS = ("reward/mean", "response/length_mean", "policy/clip_frac_low",
             "policy/clip_frac_high", "select/frac", "policy/entropy_mean",
             "trace/abs_log_ratio_mean", "rollout/staleness_mean", "perf/step_s",
             "trace/gated_frac", "trace/weight_mean", "trace/weight_max",
             "trace/weight_clipped_frac", "behaviour/weight_mean")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache and outputs")
    p.add_argument("--phase", default="study",
                   choices=("study", "runs", "grad", "sweep", "all", "report"),
                   help="study = runs + grad (the default study); all = study + sweep")
    p.add_argument("--study", default="all", choices=(*STUDIES, "all"),
                   help="which committed study (STUDIES) sets the methods, regimes and "
                        "learning-rate grid; --presets, --regimes and --tune_lrs override it")
    p.add_argument("--task", default=None,
                   help=f"a generated --dataset spec (default: the study's, else {DEFAULT_TASK})")
    p.add_argument("--presets", default=None,
                   help="methods: a preset name, or preset@form (p_trace@weight) for another "
                        "trace form (--form of scripts/train.py)")
    p.add_argument("--regimes", default=None, help="among " + ", ".join(REGIMES))
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--sweep_seeds", default="0")
    p.add_argument("--sweep_lams", default=",".join(map(str, SWEEP_LAMS)))
    p.add_argument("--sweep_qs", default=",".join(map(str, SWEEP_QS)))
    p.add_argument("--sweep_off_policy_qs", default="0.2",
                   help="the sweep's lams are also run off-policy at these quantiles ('' = none)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--eval_every", type=int, default=4)
    p.add_argument("--eval_size", type=int, default=64)
    p.add_argument("--eval_k", type=int, default=4)
    p.add_argument("--prompts_per_step", type=int, default=16)
    p.add_argument("--group_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=None,
                   help=f"answer cap (default: the study's, else {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--lr", type=float, default=None,
                   help="every method's learning rate when --tune_lrs is empty (default: the "
                        f"study's, else {DEFAULT_LR})")
    p.add_argument("--tune_lrs", default=None,
                   help="learning-rate grid: each method runs it on --tune_seeds in "
                        "--tune_regime and takes the rate with the best held-out avg@k (mean of "
                        "the last two evaluations) for every regime ('' = no tuning, --lr)")
    p.add_argument("--tune_seeds", default="100,101",
                   help="seeds of the tuning runs, never among --seeds")
    p.add_argument("--tune_regime", default="off_policy")
    p.add_argument("--threshold_gain", type=float, default=0.10,
                   help="steps-to-threshold: held-out avg@k of start + this")
    p.add_argument("--grad_batches", type=int, default=8)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--report-only", action="store_true", help="never train; report the cache")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (tests)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_every, args.eval_size, args.eval_k = 2, 1, 8, 2
        args.prompts_per_step, args.group_size = 4, 4
        args.max_new_tokens = args.max_new_tokens or 128
        args.grad_batches, args.sweep_lams, args.sweep_qs = 2, "0.0,0.95", "0.2"
        args.sweep_off_policy_qs = ""
    for name in ("presets", "regimes", "seeds", "sweep_seeds", "sweep_lams", "sweep_qs",
                 "sweep_off_policy_qs", "tune_lrs", "tune_seeds"):  # fmt: skip
        if getattr(args, name) is None:  # filled from the study (study_args)
            continue
        items = [s.strip() for s in getattr(args, name).split(",") if s.strip()]
        cast = int if "seeds" in name else float if name.startswith(("sweep_", "tune_l")) else str
        setattr(args, name, [cast(s) for s in items])
    bad = [r for r in [*(args.regimes or ()), args.tune_regime] if r not in REGIMES]
    if bad:
        raise SystemExit(f"--regimes: unknown {bad}; choose from {', '.join(REGIMES)}")
    if set(args.tune_seeds) & set(args.seeds):
        raise SystemExit("--tune_seeds must not overlap --seeds (compared runs are never tuned on)")
    for method in args.presets or ():
        method_flags(method)  # an unknown preset or form fails before any training
    return args


def study_args(args: argparse.Namespace, study: str) -> argparse.Namespace:
    """``args`` with the study's task, methods, regimes and grid wherever the command left them
    out, and the sha256 of the task's shipped policy (part of every cache key)."""
    sub = argparse.Namespace(**vars(args))
    sub.study = study
    for name in ("presets", "regimes", "tune_lrs"):
        if getattr(args, name) is None:
            setattr(sub, name, list(STUDIES[study][name]))
    if args.lr is None:
        sub.lr = STUDIES[study].get("lr", DEFAULT_LR)
    if args.task is None:
        sub.task = STUDIES[study].get("task", DEFAULT_TASK)
    if args.max_new_tokens is None:
        sub.max_new_tokens = STUDIES[study].get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    sub.check_lams = list(STUDIES[study].get("check_lams", ()))
    sub.policy_sha = policy_sha(sub.task)
    if args.smoke and args.tune_lrs is None:
        sub.tune_lrs, sub.tune_seeds = sub.tune_lrs[:2], sub.tune_seeds[:1]
    return sub


def method_flags(method: str) -> list[str]:
    """``preset`` or ``preset@form`` -> the trainer flags that select it."""
    from benchmarks.credit_gradients import method_config

    try:
        method_config(method)
    except ValueError as exc:
        raise SystemExit(f"--presets: {exc}") from None
    preset, _, form = method.partition("@")
    return ["--loss", preset, *(["--form", form] if form else [])]


# ---------------------------------------------------------------------------------- runs
def base_flags(args: argparse.Namespace, lr: float | None = None) -> list[str]:
    return ["--dataset", args.task, "--steps", str(args.steps),
            "--eval_every", str(args.eval_every), "--eval_size", str(args.eval_size),
            "--eval_k", str(args.eval_k), "--prompts_per_step", str(args.prompts_per_step),
            "--group_size", str(args.group_size), "--max_new_tokens", str(args.max_new_tokens),
            "--lr", str(args.lr if lr is None else lr), "--micro_batch_size", "64"]  # fmt: skip


def policy_sha(task: str) -> str:
    from strace_ds.assets.recipes.arithmetic import file_sha256
    from strace_ds.data.tasks import generated_task

    task_entry = generated_task(task)
    if task_entry is None:
        raise SystemExit(f"--task {task!r} is not a generated task")
    return file_sha256(task_entry.policy_dir(task) / "model.safetensors")


def run_flags(args, regime: str, preset: str, seed: int, extra=(), lr=None) -> list[str]:
    lr = method_lr(args, preset) if lr is None else lr
    return [*base_flags(args, lr), *method_flags(preset), "--seed", str(seed), *REGIMES[regime],
            *extra]  # fmt: skip


def method_lr(args, method: str) -> float:
    """The method's learning rate: the tuned one (``tune_lrs``) or ``--lr``."""
    return args.tuned_lr.get(method, args.lr) if getattr(args, "tuned_lr", None) else args.lr


def run_key(task: str, regime: str, tag: str, seed: int, flags: list[str], sha: str) -> str:
    digest = hashlib.sha256(json.dumps([flags, sha]).encode()).hexdigest()[:8]
    safe = task.replace(":", "_").replace(",", "_").replace("=", "")
    return f"{safe}-{regime}-{tag}-s{seed}-{digest}"


def study_run(args, regime: str, preset: str, seed: int, extra: list[str] = (), tag: str = "",
              export: bool = False, lr: float | None = None) -> dict | None:  # fmt: skip
    """One training run through ``scripts/train.py``, or its cached record."""
    flags = run_flags(args, regime, preset, seed, extra, lr)
    key = run_key(args.task, regime, tag or preset, seed, flags, args.policy_sha)
    path = args.work / "cache" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    if args.report_only:
        return None
    scratch = args.work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    history, wall = train(key, scratch, [*flags, "--export", "true" if export else "false"])
    evals = [{"step": int(h["eval_step"]), "avg": h["eval/accuracy"],
              **{k.rsplit("/", 1)[1]: v for k, v in h.items() if "/pass@" in k}}
             for h in history if "eval_step" in h]  # fmt: skip
    steps = [{k: h[k] for k in STEP_KEYS if k in h} for h in history if "perf/step_s" in h]
    record = {"task": args.task, "regime": regime, "preset": preset, "tag": tag or preset,
              "lr": float(flags[flags.index("--lr") + 1]),
              "seed": seed, "flags": flags, "policy_sha256": args.policy_sha,
              "tokens_per_step": [s["response/length_mean"] * args.prompts_per_step
                                  * args.group_size for s in steps],
              "evals": evals, "steps": steps, "wall_s": round(wall, 1)}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(path)
    if not export:
        shutil.rmtree(scratch / "outputs" / key, ignore_errors=True)
    return record


def run_all(args, jobs: list[tuple]) -> list[dict]:
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(study_run, args, *job) for job in jobs]
        return [r for r in (f.result() for f in futures) if r is not None]


def grid_jobs(args) -> list[tuple]:
    # seed-major order: a study cut short still has every preset and regime for its seeds
    # grpo on-policy of the first seed exports its policy: the grad phase's second checkpoint
    first = args.seeds[0]
    return [(regime, preset, seed, (), "", (regime, preset, seed) == ("on_policy", "grpo", first))
            for seed in args.seeds for regime in args.regimes
            for preset in args.presets]  # fmt: skip


def tune_jobs(args) -> list[tuple]:
    return [(args.tune_regime, method, seed, (), f"{method}-lr{lr}", False, lr)
            for seed in args.tune_seeds for lr in args.tune_lrs
            for method in args.presets]  # fmt: skip


def tuning_score(runs: list[dict]) -> float:
    """Mean held-out avg@k over tuning runs, each scored by the mean of its last two
    evaluations (which damps one noisy one)."""
    return sum(sum(e["avg"] for e in r["evals"][-2:]) / len(r["evals"][-2:])
               for r in runs) / len(runs)  # fmt: skip


def pick_lrs(args, records: list[dict]) -> dict[str, dict]:
    """Per method, the grid's rate with the best :func:`tuning_score` over the tuning seeds."""
    out = {}
    for method in args.presets:
        scores = {}
        for lr in args.tune_lrs:
            runs = [r for r in records if r["tag"] == f"{method}-lr{lr}"]
            if runs:
                scores[lr] = tuning_score(runs)
        if scores:
            out[method] = {"lr": max(scores, key=scores.get),
                           "scores": {str(k): v for k, v in scores.items()}}  # fmt: skip
    return out


def trace_methods(args) -> list[str]:
    """The study's methods that carry a trace (``lam`` > 0): those the lam check varies."""
    from benchmarks.credit_gradients import method_config

    return [m for m in args.presets if method_config(m).lam > 0]


def lam_jobs(args) -> list[tuple]:
    if not (args.check_lams and args.tune_lrs):
        return []
    return [(args.tune_regime, method, seed, ["--lam", str(lam)], f"{method}-lam{lam}", False,
             method_lr(args, method))
            for seed in args.tune_seeds for lam in args.check_lams
            for method in trace_methods(args)]  # fmt: skip


def lam_check(args, records: list[dict]) -> dict[str, dict]:
    """Per trace method, :func:`tuning_score` at each ``lam`` at its picked rate: the preset's
    own ``lam`` is its tuning run at that rate, ``lam = 0`` is GRPO's tuning run at that rate
    (the identity of every form), the others are the lam check's runs."""
    from benchmarks.credit_gradients import method_config

    out = {}
    for method in trace_methods(args):
        lr = method_lr(args, method)
        tags = {method_config(method).lam: f"{method}-lr{lr}", 0.0: f"grpo-lr{lr}",
                **{lam: f"{method}-lam{lam}" for lam in args.check_lams}}  # fmt: skip
        scores = {}
        for lam in sorted(tags):
            runs = [r for r in records if r["tag"] == tags[lam]]
            if runs:
                scores[str(lam)] = tuning_score(runs)
        if scores:
            out[method] = {"lr": lr, "lam": method_config(method).lam, "scores": scores,
                           "best": float(max(scores, key=scores.get))}  # fmt: skip
    return out


def sweep_jobs(args) -> list[tuple]:
    grid = [("on_policy", q) for q in args.sweep_qs]
    grid += [("off_policy", q) for q in args.sweep_off_policy_qs]
    return [(regime, "s_trace@ratio", seed, ["--lam", str(lam), "--entropy_top_quantile", str(q)],
             f"s_trace-lam{lam}-q{q}" + ("" if regime == "on_policy" else f"-{regime}"))
            for regime, q in grid for seed in args.sweep_seeds
            for lam in args.sweep_lams]  # fmt: skip


# ---------------------------------------------------------------------------------- analysis
def crossing(evals: list[dict], threshold: float) -> float | None:
    """First step where held-out avg@k reaches ``threshold`` (linear between evaluations)."""
    for a, b in zip(evals, evals[1:]):
        if a["avg"] >= threshold:
            return float(a["step"])
        if b["avg"] >= threshold:
            frac = (threshold - a["avg"]) / (b["avg"] - a["avg"])
            return a["step"] + frac * (b["step"] - a["step"])
    return None


def tokens_until(record: dict, step: float) -> float:
    """Generated tokens of the steps up to ``step`` (fractional steps pro rata)."""
    per = record["tokens_per_step"]
    whole = int(step)
    return sum(per[:whole]) + (step - whole) * (per[whole] if whole < len(per) else 0.0)


def derive(record: dict, threshold: float) -> dict:
    evals = record["evals"]
    hit = crossing(evals, threshold)
    last = evals[-1]
    censored = hit is None
    steps = float(len(record["steps"])) if censored else hit  # censored: the last step
    return {"start": evals[0]["avg"], "final": last["avg"],
            "pass": {k: v for k, v in last.items() if k.startswith("pass@")},
            "steps_to_threshold": steps, "censored": censored,
            "tokens_to_threshold": tokens_until(record, steps),
            "reward_last": _mean_last(record, "reward/mean"),
            "clip_frac": _mean_last(record, "policy/clip_frac_low")
            + _mean_last(record, "policy/clip_frac_high"),
            "select_frac": _mean_last(record, "select/frac")}  # fmt: skip


def _mean_last(record: dict, key: str, n: int = 4) -> float:
    vals = [s[key] for s in record["steps"][-n:] if key in s]
    return sum(vals) / len(vals) if vals else float("nan")


def paired_ratio_ci(num: list[float], den: list[float], n_boot: int = 2000, seed: int = 0):
    """mean(num) / mean(den) with a paired percentile bootstrap over seeds."""
    import random

    rng = random.Random(seed)
    n = len(num)
    point = (sum(num) / n) / (sum(den) / n)
    stats = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        d = sum(den[i] for i in idx)
        if d > 0:
            stats.append(sum(num[i] for i in idx) / d)
    stats.sort()
    return point, stats[int(0.025 * len(stats))], stats[int(0.975 * len(stats)) - 1]


def fmt_ci(m: float, lo: float, hi: float, scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * m:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def summarise(args, records: list[dict]) -> dict:
    """Every derived number of the grid: per (regime, preset) over seeds, and vs GRPO."""
    from benchmarks.credit_gradients import bootstrap_ci

    grid = [r for r in records if r["tag"] == r["preset"]]
    start = [r["evals"][0]["avg"] for r in grid]
    threshold = (sum(start) / len(start) if start else 0.0) + args.threshold_gain
    out: dict = {"threshold": threshold, "threshold_gain": args.threshold_gain,
                 "task": args.task, "regimes": {}}  # fmt: skip
    for regime in args.regimes:
        cells = {}
        by = {p: sorted((r for r in grid if r["regime"] == regime and r["preset"] == p),
                        key=lambda r: r["seed"]) for p in args.presets}  # fmt: skip
        for preset, runs in by.items():
            if not runs:
                continue
            d = [derive(r, threshold) for r in runs]
            steps_grid = sorted({e["step"] for r in runs for e in r["evals"]})
            curve = []
            answers_per_step = args.prompts_per_step * args.group_size
            for s in steps_grid:
                vals = [e["avg"] for r in runs for e in r["evals"] if e["step"] == s]
                toks = [tokens_until(r, s) for r in runs]
                curve.append({"step": s, "answers": s * answers_per_step,
                              "tokens": sum(toks) / len(toks),
                              **dict(zip(("mean", "lo", "hi"), bootstrap_ci(vals)))})  # fmt: skip
            k = f"pass@{args.eval_k}"
            cell = {"seeds": [r["seed"] for r in runs], "curve": curve,
                    "lr": runs[0].get("lr", args.lr), "updates_per_batch": UPDATES[regime],
                    "final": bootstrap_ci([x["final"] for x in d]),
                    "pass_k": bootstrap_ci([x["pass"].get(k, float("nan")) for x in d]),
                    "steps_to_threshold": bootstrap_ci([x["steps_to_threshold"] for x in d]),
                    "tokens_to_threshold": bootstrap_ci([x["tokens_to_threshold"] for x in d]),
                    "reached": sum(not x["censored"] for x in d),
                    "reward_last": bootstrap_ci([x["reward_last"] for x in d]),
                    "clip_frac": bootstrap_ci([x["clip_frac"] for x in d]),
                    "per_seed": d}  # fmt: skip
            cells[preset] = cell
        base = by.get("grpo") or []
        for preset, cell in cells.items():
            runs = by[preset]
            common = sorted({r["seed"] for r in runs} & {r["seed"] for r in base})
            if preset == "grpo" or len(common) < 2:
                continue
            mine = {r["seed"]: derive(r, threshold) for r in runs}
            ref = {r["seed"]: derive(r, threshold) for r in base}
            cell["vs_grpo"] = {
                "seeds": common,
                "steps_ratio": paired_ratio_ci([mine[s]["steps_to_threshold"] for s in common],
                                               [ref[s]["steps_to_threshold"] for s in common]),
                "tokens_ratio": paired_ratio_ci(
                    [mine[s]["tokens_to_threshold"] for s in common],
                    [ref[s]["tokens_to_threshold"] for s in common]),
                "final_diff": bootstrap_ci([mine[s]["final"] - ref[s]["final"] for s in common]),
                "pass_k_diff": bootstrap_ci([mine[s]["pass"].get(k, 0.0)
                                             - ref[s]["pass"].get(k, 0.0) for s in common]),
            }  # fmt: skip
        if cells:
            out["regimes"][regime] = cells
    sweep = [r for r in records if r["tag"].startswith("s_trace-lam")]
    out["sweep"] = {}
    for tag in sorted({r["tag"] for r in sweep}):
        d = [derive(r, threshold) for r in sweep if r["tag"] == tag]
        out["sweep"][tag] = {"seeds": len(d),
                             **{f: sum(x[f] for x in d) / len(d)
                                for f in ("final", "reward_last", "clip_frac", "select_frac")}}
    return out


def report(args, summary: dict, grad: dict | None) -> str:
    from benchmarks.credit_gradients import bootstrap_ci

    k = args.eval_k
    lr_text = (f"each method at its own learning rate from the grid {args.tune_lrs} on tuning "
               f"seeds {args.tune_seeds} ({args.tune_regime}; table at the end)"
               if summary.get("tuning") else f"lr {args.lr}")
    lines = [f"# Credit-assignment study `{args.study}`: {args.task}", "",
             f"Held-out avg@{k} on {args.eval_size} problems, {args.steps} steps of "
             f"{args.prompts_per_step} x {args.group_size} answers, {lr_text}. Means over "
             "seeds with percentile-bootstrap 95% intervals. Threshold for steps-to-threshold: "
             f"{100 * summary['threshold']:.1f}% (the mean warm-start avg@{k} + "
             f"{100 * args.threshold_gain:.0f} points); runs that never reach it count as the "
             "last step (a lower bound), `reached` says how many did.", ""]  # fmt: skip
    for regime, cells in summary["regimes"].items():
        lines += [f"## {regime} ({UPDATES[regime]} update(s) per batch)", "",
                  f"| preset | lr | seeds | final avg@{k} % | pass@{k} % | steps to thr. | "
                  f"reached | steps ratio vs GRPO | tokens ratio vs GRPO | avg@{k} - GRPO "
                  "(points) | clip frac % |", "|" + "---|" * 11]  # fmt: skip
        for preset, c in cells.items():
            v = c.get("vs_grpo")
            lines.append("| " + " | ".join([
                preset, f"{c['lr']:g}", str(len(c["seeds"])), fmt_ci(*c["final"]),
                fmt_ci(*c["pass_k"]),
                fmt_ci(*c["steps_to_threshold"], scale=1.0), f"{c['reached']}/{len(c['seeds'])}",
                fmt_ci(*v["steps_ratio"], scale=1.0, digits=2) if v else "1",
                fmt_ci(*v["tokens_ratio"], scale=1.0, digits=2) if v else "1",
                fmt_ci(*v["final_diff"]) if v else "0",
                fmt_ci(*c["clip_frac"]),
            ]) + " |")  # fmt: skip
        lines.append("")
    if grad:
        lines += ["## Gradients", "", "Relative variance across batches "
                  "(mean ||g_b - mean g||^2 / ||mean g||^2; saturates near n - 1 when noise "
                  "dominates), noise-to-signal (tr Cov / ||E g||^2 from unbiased pieces, the "
                  "figure to compare), and cosine of each batch gradient to a large-batch "
                  "gradient from independent batches (bootstrap over batches); "
                  f"{args.grad_batches} + {args.grad_batches} batches of "
                  f"{args.prompts_per_step // 2} x {args.group_size} answers, on-policy (ratio 1)"
                  ".", "",
                  "| checkpoint | preset | rel. variance | noise / signal | cosine to large batch |"
                  " cosine - GRPO's (paired by batch) | grad norm |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for ck, res in grad.items():
            ref = res["presets"].get("grpo", {}).get("cosine")
            for preset, g in res["presets"].items():
                diff = "-" if preset == "grpo" or ref is None else fmt_ci(
                    *bootstrap_ci([a - b for a, b in zip(g["cosine"], ref)]), scale=1.0, digits=3)
                lines.append(f"| {ck} | {preset} | {g['rel_variance']:.2f} | "
                             f"{g.get('noise_to_signal', float('nan')):.2f} | "
                             f"{fmt_ci(*bootstrap_ci(g['cosine']), scale=1.0, digits=3)} | "
                             f"{diff} | {g['grad_norm_mean']:.3f} |")
        lines.append("")
    if summary.get("tuning"):
        lrs = [str(lr) for lr in args.tune_lrs]
        lines += ["## Learning-rate tuning", "", f"{args.tune_regime}, seeds {args.tune_seeds} "
                  f"(not among the compared seeds): held-out avg@{k} %, mean of the last two "
                  "evaluations; the best rate (bold) is the method's rate everywhere above.", "",
                  "| method | " + " | ".join(f"lr {lr}" for lr in lrs) + " |",
                  "|---|" + "---|" * len(lrs)]  # fmt: skip
        for method, t in summary["tuning"].items():
            lines.append(f"| {method} | " + _score_cells(t["scores"], lrs, t["lr"]) + " |")
        lines.append("")
    if summary.get("lam_check"):
        lams = sorted({lam for t in summary["lam_check"].values() for lam in t["scores"]},
                      key=float)  # fmt: skip
        lines += ["## lam check", "", f"{args.tune_regime}, seeds {args.tune_seeds}, each trace "
                  f"method at its picked rate: held-out avg@{k} %, mean of the last two "
                  "evaluations (lam 0 is GRPO's run, the preset's own lam its tuning run; the "
                  "grid above keeps the preset's lam; best in bold).", "",
                  "| method | lr | " + " | ".join(f"lam {lam}" for lam in lams) + " |",
                  "|---|---|" + "---|" * len(lams)]  # fmt: skip
        for method, t in summary["lam_check"].items():
            lines.append(f"| {method} | {t['lr']:g} | "
                         + _score_cells(t["scores"], lams, t["best"]) + " |")
        lines.append("")
    if summary["sweep"]:
        lines += ["## s_trace: lam x entropy_top_quantile", "", "On-policy unless the run "
                  "name says otherwise; one update per batch never clips (ratio 1), so the clip "
                  "fraction only moves off-policy.", "",
                  f"| run | seeds | final avg@{k} % | reward (last 4 steps) | clip frac % | "
                  "selected % |", "|---|---|---|---|---|---|"]  # fmt: skip
        for tag, s in summary["sweep"].items():
            lines.append(f"| {tag} | {s['seeds']} | {100 * s['final']:.1f} | "
                         f"{s['reward_last']:.3f} | {100 * s['clip_frac']:.2f} | "
                         f"{100 * s['select_frac']:.1f} |")
    return "\n".join(lines) + "\n"


def _score_cells(scores: dict[str, float], keys: list[str], best: float) -> str:
    """One table row's tuning scores in %, the ``best`` setting in bold, ``-`` where not run."""
    return " | ".join((f"**{100 * scores[key]:.1f}**" if float(key) == best
                       else f"{100 * scores[key]:.1f}") if key in scores else "-"
                      for key in keys)  # fmt: skip


def figure(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(summary["regimes"])
    fig, axes = plt.subplots(2, len(regimes), figsize=(4.2 * len(regimes), 6.8), sharey=True,
                             squeeze=False)  # fmt: skip
    # sample efficiency (answers generated) on top, token efficiency (tokens generated) below
    for row, (x_key, x_label) in enumerate((("answers", "answers generated"),
                                            ("tokens", "answer tokens generated"))):
        for ax, regime in zip(axes[row], regimes):
            for preset, c in summary["regimes"][regime].items():
                xs = [p.get(x_key, p["step"]) for p in c["curve"]]
                line, = ax.plot(xs, [100 * p["mean"] for p in c["curve"]], label=preset, lw=1.6)
                ax.fill_between(xs, [100 * p["lo"] for p in c["curve"]],
                                [100 * p["hi"] for p in c["curve"]], alpha=0.12,
                                color=line.get_color())  # fmt: skip
            ax.axhline(100 * summary["threshold"], color="grey", ls=":", lw=1)
            ax.set_title(f"{regime.replace('_', '-')} ({UPDATES[regime]} upd./batch)", fontsize=9)
            ax.set_xlabel(x_label)
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("held-out avg@k (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{summary['task']}: mean over seeds, bands = bootstrap 95% interval",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.phase == "report":
        args.report_only = True
    studies = list(STUDIES) if args.study == "all" else [args.study]
    out: dict = {"task": args.task or DEFAULT_TASK, "studies": {}}
    texts = []
    for study in studies:
        sub = study_args(args, study)
        summary = run_study(sub)
        out["studies"][study] = summary
        texts.append(report(sub, summary, summary["grad"]))
        if summary["regimes"] and study in FIGURES:
            figure(summary, args.work / FIGURES[study])
    (args.work / "summary.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.work / "results.md").write_text("\n".join(texts))
    print(args.work / "results.md")


FIGURES = {"presets": "credit_study.png", "forms": "credit_study_forms.png",
           "long": "credit_study_long.png"}


def run_study(args) -> dict:
    """One study: tuning, grid (and for ``presets`` the sweep and the gradient probe), summary."""
    # tuning first: the grid runs each method at its picked rate (reported runs only read)
    args.tuned_lr = {}
    tuned = run_all(args, tune_jobs(args)) if args.tune_lrs else []
    tuning = pick_lrs(args, tuned) if args.tune_lrs else {}
    args.tuned_lr = {m: t["lr"] for m, t in tuning.items()}
    lam_runs = lam_jobs(args)
    lams = lam_check(args, tuned + run_all(args, lam_runs)) if lam_runs else {}
    extras = args.study == "presets"  # the sweep and the gradient probe belong to the first study
    report_only = args.report_only
    if args.phase in ("study", "all", "runs"):
        run_all(args, grid_jobs(args))
    if extras and args.phase in ("all", "sweep"):
        run_all(args, sweep_jobs(args))
    grad = grad_phase(args) if extras and args.phase in ("study", "all", "grad") else None
    args.report_only = True  # the report reads whatever the cache holds
    records = run_all(args, grid_jobs(args)) + (run_all(args, sweep_jobs(args)) if extras else [])
    grad = grad or (grad_phase(args) if extras else None)
    args.report_only = report_only
    summary = summarise(args, records)
    summary["study"] = args.study
    summary["tuning"] = tuning
    summary["lam_check"] = lams
    summary["grad"] = grad
    return summary


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return path.name


def grad_phase(args) -> dict | None:
    """Gradient statistics at the warm start and after GRPO on-policy seed 0 (cached)."""
    sizes = [args.grad_batches, args.prompts_per_step, args.group_size, args.max_new_tokens,
             *run_flags(args, "on_policy", "grpo", args.seeds[0])]  # fmt: skip
    path = args.work / "cache" / f"grad-{run_key(args.task, 'grad', 'all', 0, sizes, args.policy_sha)}.json"  # noqa: E501
    if path.exists():
        return json.loads(path.read_text())
    if args.report_only:
        return None
    from benchmarks.credit_gradients import gradient_probe
    from strace_ds.data.tasks import generated_task

    seed = args.seeds[0]
    final = None
    for tag in ("grpo", "grpo-export"):
        # the grid's run exported its policy; if the export is gone (a cached record from
        # another machine), train the same run again under another tag
        flags = run_flags(args, "on_policy", "grpo", seed)
        key = run_key(args.task, "on_policy", tag, seed, flags, args.policy_sha)
        if tag == "grpo-export":
            (args.work / "cache" / f"{key}.json").unlink(missing_ok=True)
        study_run(args, "on_policy", "grpo", seed, tag=tag, export=True)
        final = args.work / "scratch" / "outputs" / key / "final"
        if (final / "config.json").is_file():
            break
    out = {}
    for name, model_dir in (("warm start", generated_task(args.task).policy_dir(args.task)),
                            ("after GRPO", final)):  # fmt: skip
        out[name] = gradient_probe(str(model_dir), args.task, list(args.presets),
                                   n_batches=args.grad_batches,
                                   prompts_per_batch=args.prompts_per_step // 2,
                                   group_size=args.group_size,
                                   max_new_tokens=args.max_new_tokens, seed=0)  # fmt: skip
        out[name]["model_dir"] = _shown(Path(model_dir))  # no machine's absolute path
    path.write_text(json.dumps(out) + "\n")
    return out


if __name__ == "__main__":
    main()
