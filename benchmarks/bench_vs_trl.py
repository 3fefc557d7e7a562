"""Speed side by side: TRL's ``GRPOTrainer`` against our main command with ``--loss grpo``.

    python -m benchmarks.bench_vs_trl [--rounds 3] [--steps 8] [--warmup 2] [--long]
        [--max-new-tokens N] [--reward-workers 2] [--threads 1] [--python PY]
        [--trl-python PY] [--work DIR] [--write]

Both sides train the same policy on the same prompts with the same reward and shape, one
process each, float32 on the CPU (on a GPU: ours in bf16 as ``zero3.json`` asks, TRL with
``bf16=True``; not measured here), ONE run at a time,
interleaved over ``--rounds`` (round r runs ours then TRL, round r+1 TRL then ours, so a drift
of the machine's load falls on both):

* policy: the shipped tiny Qwen3 (``strace_ds/assets/tiny-qwen3``); with ``--long`` a copy of it
  in ``--work`` whose stop token is one it never samples (``<|endoftext|>``) and whose context
  is 1024 positions, so that every answer runs to ``--max-new-tokens`` (default 512 there: the
  top of the 256-512 range; ``--max-new-tokens 256`` gives the bottom). The tiny policy stops
  after ~15-30 tokens, and neither trainer has a minimum answer length, so this is how both
  get long answers of the same length.
* prompts: the synthetic arithmetic task our trainer draws by default (``--dataset synthetic``,
  4000 training problems of seed 0; ``strace_ds.data.tasks``); TRL gets them as one-turn
  conversations, rendered by the same chat template.
* reward: math-verify correctness. Ours: ``--reward math_verify``; TRL: :func:`math_verify_reward`
  (TRL's shape ``fn(prompts, completions, answer, **kw) -> list[float]``), which grades through
  the same :class:`strace_ds.rewards.RewardPool` (``--reward-workers`` processes on each side).
* shape: 32 prompts x 8 answers per step, 40 new tokens, sampling at temperature 1 (no top-k,
  top-p 1), 2 optimizer updates per step (ours ``--mini_batches 2``; TRL:
  ``generation_batch_size`` 256 = ``per_device_train_batch_size`` 64 x ``steps_per_generation``
  4, ``gradient_accumulation_steps`` 2, ``num_iterations`` 1: one generation every 2 TRL
  steps, each TRL step one update on 128 answers in 2 micro-batches of 64, as ours). Both
  score the old log-probs once per generation (TRL does because its generation spans more than
  one update; ours, under the default ``--old_logprobs auto``, takes them from the in-process
  engine's sampling pass, the same weights in float32, and from the first update's own
  forward, so its scoring pass is skipped; ``tests/e2e/test_update_invariance.py`` shows the
  update equal to the scored one to 1e-5), AdamW lr 2e-4 constant, no warm-up, weight
  decay 0, gradient clip 1, no KL, group-normalised advantages, clip 0.2/0.2, token-mean loss
  over the update's answers (TRL ``loss_type="dapo"``), no gradient checkpointing (TRL's
  default would turn it on).
* ours: ``scripts/train.py --ds_config ds_configs/zero3.json --loss grpo --rollout hf``
  (DeepSpeed ZeRO-3 on one process; on the CPU our config resolver turns bf16 off), no
  evaluation, no export. TRL: its own default set-up (accelerate, no DeepSpeed).

Timing. Ours: ``perf/*`` of each step from the run's ``metrics.jsonl``. TRL: a
``TrainerCallback`` stamps the start and end of every TRL step, and the trainer's generation,
scoring and reward calls are timed by wrapping them in a subclass (no TRL code changed). One
"step" is one generation and its 2 updates on both sides. Phases:

  ====================  ===========================  =========================================
  phase                 ours                         TRL
  ====================  ===========================  =========================================
  step_s                ``perf/step_s``              start of its 1st update -> end of its 2nd
  generate_s            ``perf/rollout_s``           ``_generate`` (``model.generate``)
  reward_s              ``perf/reward_s``            the reward function
  prepare_s             ``perf/old_logprob_s``       the rest of ``_generate_and_score_
                                                     completions`` (tokenising, old log-probs,
                                                     advantages)
  train_s               ``perf/train_s``             step_s minus the three above
  sync_s                ``perf/sync_s``              - (TRL generates with the trained model)
  ====================  ===========================  =========================================

Steps ``--warmup + 1 .. --steps`` of each run are timed. Per phase and side: the median over
the timed steps of all rounds (and the range of the per-round medians); the ratio ours/TRL of
those medians with a 95% bootstrap interval (timed steps resampled within each round and side,
2000 draws) and the range of the per-round ratios. Below 1: ours is faster.

Environment (this script installs nothing). TRL is not a dependency of strace_ds; make one
environment with both, from the repository root (CPU; the locked versions; TRL 1.16.0 was
checked against them)::

    python3 -m venv .venv-trl
    .venv-trl/bin/pip install torch==2.13.0 -c constraints/cpu.txt
    DS_BUILD_OPS=0 .venv-trl/bin/pip install -e . trl==1.16.0 -c constraints/cpu.txt
    OMP_NUM_THREADS=1 .venv-trl/bin/python -m benchmarks.bench_vs_trl

Both sides run under ``--python`` (default: this interpreter) and ``--trl-python`` (default
the same), so the same torch and transformers serve both. Runs are kept in ``--work`` (default
``outputs/bench_vs_trl``, a fresh subfolder per invocation); the report is printed, and written
to ``benchmarks/results_vs_trl.md`` only with ``--write``. Not a test: a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results_vs_trl.md"
SIDES = ("ours", "trl")
PHASES = ("step_s", "generate_s", "reward_s", "prepare_s", "train_s", "sync_s")
OURS_KEYS = {"step_s": "perf/step_s", "generate_s": "perf/rollout_s", "reward_s": "perf/reward_s",
             "prepare_s": "perf/old_logprob_s", "train_s": "perf/train_s",
             "sync_s": "perf/sync_s"}  # fmt: skip
DATASET_SIZE = 4000  # our trainer's --dataset_size default
LONG_DEFAULT_TOKENS = 512
NEVER_SAMPLED = "<|endoftext|>"  # the tiny policy's pad token: the --long copy's stop token
BOOTSTRAP_DRAWS = 2000


@dataclass(frozen=True)
class Shape:
    """One step: ``prompts`` x ``group`` answers of at most ``max_new_tokens``, ``updates``
    optimizer updates (mini-batches) in micro-batches of ``micro`` rows."""

    prompts: int = 32
    group: int = 8
    max_new_tokens: int = 40
    updates: int = 2
    micro: int = 64
    lr: float = 2e-4
    long: bool = False

    @property
    def rows(self) -> int:
        return self.prompts * self.group


def trl_batching(shape: Shape) -> dict[str, int]:
    """TRL's batch settings for ``shape``: one generation of ``rows`` answers per our step,
    ``updates`` optimizer updates on it, ``micro`` rows per forward/backward."""
    if shape.rows % shape.updates or (shape.rows // shape.updates) % shape.micro:
        raise ValueError(
            f"{shape.prompts} x {shape.group} answers must split into {shape.updates} updates of "
            f"whole micro-batches of {shape.micro}"
        )
    per_update = shape.rows // shape.updates
    return {
        "per_device_train_batch_size": shape.micro,
        "gradient_accumulation_steps": per_update // shape.micro,
        "steps_per_generation": shape.rows // shape.micro,
        "num_iterations": 1,
        "num_generations": shape.group,
    }


def ours_flags(shape: Shape, steps: int, seed: int, reward_workers: int) -> list[str]:
    """The flags of our run (after ``--ds_config``, ``--run_name`` and the directories)."""
    return ["--loss", "grpo", "--seed", str(seed), "--steps", str(steps),
            "--prompts_per_step", str(shape.prompts), "--group_size", str(shape.group),
            "--max_new_tokens", str(shape.max_new_tokens), "--mini_batches", str(shape.updates),
            "--micro_batch_size", str(shape.micro), "--lr", str(shape.lr),
            "--rollout", "hf", "--reward", "math_verify",
            "--reward_workers", str(reward_workers), "--eval_every", "-1",
            "--export", "false"]  # fmt: skip


# -------------------------------------------------------------------------------- the reward
_POOL: Any = None  # the TRL worker's RewardPool; None grades in this process


def math_verify_reward(prompts: list, completions: list, answer: list[str], **kwargs: Any
                       ) -> list[float]:  # fmt: skip
    """math-verify correctness in TRL's reward shape, graded as our ``--reward math_verify``
    does (``strace_ds.rewards``): through the worker's :class:`RewardPool`, else in-process."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    if _POOL is not None:
        return list(_POOL.score(texts, list(answer)).rewards)
    from strace_ds.rewards import grade_answer

    return [float(grade_answer(t, g)) for t, g in zip(texts, answer, strict=True)]


# ------------------------------------------------------------------------------- the policy
def policy_dir(long: bool, work: Path) -> Path:
    """The shipped tiny policy, or (``long``) its copy that never stops before the cap."""
    from strace_ds.assets import default_policy_dir

    shipped = default_policy_dir()
    if not long:
        return shipped
    out = work / "tiny-qwen3-long"
    if (out / "config.json").is_file():
        return out
    tmp = work / "tiny-qwen3-long.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(shipped, tmp)
    tok = json.loads((shipped / "tokenizer.json").read_text())
    stop = next(t["id"] for t in tok["added_tokens"] if t["content"] == NEVER_SAMPLED)
    for name, changes in (("config.json", {"eos_token_id": stop, "max_position_embeddings": 1024}),
                          ("generation_config.json", {"eos_token_id": stop}),
                          ("tokenizer_config.json", {"eos_token": NEVER_SAMPLED,
                                                     "model_max_length": 1024})):  # fmt: skip
        cfg = json.loads((tmp / name).read_text())
        cfg.update(changes)
        (tmp / name).write_text(json.dumps(cfg, indent=2) + "\n")
    tmp.rename(out)
    return out


PLACEHOLDERS = {"--python": "PY", "--trl-python": "TRL_PY"}  # this machine's interpreters
DROPPED = ("--work",)  # where this machine kept the runs


def portable_cmdline(argv: list[str]) -> str:
    """The command that made a report, as committed: the interpreters' paths replaced by
    ``PY``/``TRL_PY`` and ``--work`` left out, so results name no path of the machine."""
    out, i = ["python", "-m", "benchmarks.bench_vs_trl"], 0
    while i < len(argv):
        flag, _, value = argv[i].partition("=")
        takes_next = not value and i + 1 < len(argv) and flag in (*PLACEHOLDERS, *DROPPED)
        if flag in PLACEHOLDERS:
            out += [flag, PLACEHOLDERS[flag]]
        elif flag not in DROPPED:
            out.append(argv[i])
        i += 2 if takes_next else 1
    return " ".join(out)


# ---------------------------------------------------------------------------------- running
def _env(threads: int) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                TOKENIZERS_PARALLELISM="false", PYTHONPATH=path)  # fmt: skip


def _run(cmd: list[str], log: Path, threads: int) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, env=_env(threads), stdout=fh, stderr=subprocess.STDOUT,
                            cwd=REPO).returncode  # fmt: skip
    if rc:
        raise RuntimeError(f"{cmd[1:4]} failed (rc {rc}), log {log}:\n{log.read_text()[-4000:]}")
    return time.perf_counter() - t0


def run_ours(args: argparse.Namespace, shape: Shape, policy: Path, name: str, work: Path) -> dict:
    from strace_ds.train.monitor import read_history

    cmd = [args.python, str(REPO / "scripts" / "train.py"),
           "--ds_config", str(REPO / "ds_configs" / "zero3.json"), "--run_name", name,
           "--output_dir", str(work / "outputs"), "--log_dir", str(work / "runs"),
           "--model", str(policy), *ours_flags(shape, args.steps, args.seed,
                                               args.reward_workers)]  # fmt: skip
    wall = _run(cmd, work / f"{name}.log", args.threads)
    steps = []
    for h in read_history(work / "outputs" / name):
        if "perf/step_s" in h:
            row = {p: h[k] for p, k in OURS_KEYS.items() if k in h}
            row["answer_tokens"] = h.get("response/length_mean", float("nan"))
            row["reward"] = h.get("reward/mean", float("nan"))
            steps.append(row)
    return {"side": "ours", "steps": steps, "wall_s": wall}


def run_trl(args: argparse.Namespace, shape: Shape, policy: Path, name: str, work: Path) -> dict:
    spec = {"shape": asdict(shape), "steps": args.steps, "seed": args.seed, "policy": str(policy),
            "reward_workers": args.reward_workers, "out": str(work / f"{name}.json"),
            "output_dir": str(work / "outputs" / name)}  # fmt: skip
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [args.trl_python, "-m", "benchmarks.bench_vs_trl", "--trl-worker", str(spec_path)]
    wall = _run(cmd, work / f"{name}.log", args.threads)
    out = json.loads(Path(spec["out"]).read_text())
    return {"side": "trl", "steps": group_trl_steps(out["marks"], out["generations"],
                                                   shape.updates), "wall_s": wall,
            "versions": out.get("versions", {})}  # fmt: skip


def group_trl_steps(marks: list[list[float]], generations: list[dict], updates: int
                    ) -> list[dict]:  # fmt: skip
    """Our steps from TRL's: ``marks`` holds ``[start, end]`` of each TRL step (one optimizer
    update), ``generations`` one dict per generation (``generate_s``, ``reward_s``,
    ``score_s`` the whole of generating and scoring, ``answer_tokens``, ``reward``). Every
    ``updates`` consecutive TRL steps are one of ours, its generation in the first."""
    n = len(marks) // updates
    if len(marks) % updates or len(generations) != n:
        raise ValueError(f"{len(marks)} TRL steps and {len(generations)} generations do not "
                         f"make whole steps of {updates} updates")  # fmt: skip
    steps = []
    for i, g in enumerate(generations):
        first, last = marks[i * updates], marks[(i + 1) * updates - 1]
        step_s = last[1] - first[0]
        steps.append({"step_s": step_s, "generate_s": g["generate_s"], "reward_s": g["reward_s"],
                      "prepare_s": g["score_s"] - g["generate_s"] - g["reward_s"],
                      "train_s": step_s - g["score_s"], "answer_tokens": g["answer_tokens"],
                      "reward": g["reward"]})  # fmt: skip
    return steps


# ------------------------------------------------------------------------------- statistics
def timed(steps: list[dict], warmup: int) -> list[dict]:
    """Steps ``warmup + 1 ..`` (all of them if there are no more)."""
    return steps[warmup:] if len(steps) > warmup else steps


def _values(run: dict, phase: str, warmup: int) -> list[float]:
    return [s[phase] for s in timed(run["steps"], warmup) if phase in s and s[phase] == s[phase]]


def _quantile(sorted_vals: list[float], q: float) -> float:
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def bootstrap_ratio(ours: list[list[float]], trl: list[list[float]], draws: int = BOOTSTRAP_DRAWS,
                    seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """95% bootstrap interval of median(ours) / median(trl): each draw resamples the timed
    steps within each round of each side (``ours[r]``: round r's values), with replacement."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(draws):
        a = [rng.choice(r) for r in ours for _ in r]
        b = [rng.choice(r) for r in trl for _ in r]
        mb = statistics.median(b)
        ratios.append(statistics.median(a) / mb if mb else float("inf"))
    ratios.sort()
    return _quantile(ratios, 0.025), _quantile(ratios, 0.975)


def summarize(runs: list[dict], warmup: int, draws: int = BOOTSTRAP_DRAWS) -> dict[str, dict]:
    """Per phase: each side's pooled median and per-round medians, and the ratio ours/TRL with
    its bootstrap interval and per-round range (rounds paired by their ``round``)."""
    out: dict[str, dict] = {}
    rounds = sorted({r["round"] for r in runs})
    for phase in PHASES:
        per: dict[str, list[list[float]]] = {}
        for side in SIDES:
            per[side] = [v for rnd in rounds for r in runs
                         if r["side"] == side and r["round"] == rnd
                         for v in [_values(r, phase, warmup)] if v]  # fmt: skip
        row: dict[str, Any] = {}
        for side in SIDES:
            vals = [v for rv in per[side] for v in rv]
            row[side] = statistics.median(vals) if vals else None
            row[f"{side}_rounds"] = [statistics.median(rv) for rv in per[side]]
        if row["ours"] is not None and row["trl"]:
            row["ratio"] = row["ours"] / row["trl"]
            row["ratio_ci"] = bootstrap_ratio(per["ours"], per["trl"], draws)
            paired = [o / t for o, t in zip(row["ours_rounds"], row["trl_rounds"]) if t]
            row["ratio_rounds"] = paired
        out[phase] = row
    return out


def _side_mean(runs: list[dict], side: str, key: str, warmup: int) -> float:
    vals = [v for r in runs if r["side"] == side for v in _values(r, key, warmup)]
    return statistics.fmean(vals) if vals else float("nan")


def report(runs: list[dict], warmup: int, context: dict[str, str],
           draws: int = BOOTSTRAP_DRAWS) -> str:  # fmt: skip
    """The markdown report: the phase table, then the sanity rows and each run's wall time."""
    summary = summarize(runs, warmup, draws)
    n_rounds = len({r["round"] for r in runs})

    def cell(row: dict, side: str) -> str:
        if row[side] is None:
            return "-"
        rs = row[f"{side}_rounds"]
        return f"{row[side]:.3f}" + (f" [{min(rs):.3f}, {max(rs):.3f}]" if len(rs) > 1 else "")

    lines = [
        f"Shape: {context.get('shape', '')}. {context.get('machine', '')}",
        "",
        f"Seconds per step, median over steps {warmup + 1}..N of {n_rounds} round(s) "
        "[range of the per-round medians]; ratio = ours / TRL of the medians [95% bootstrap "
        "interval] (range of the per-round ratios). Below 1: ours is faster.",
        "",
        "| phase | ours (s) | TRL (s) | ours / TRL |",
        "|---|---|---|---|",
    ]
    for phase in PHASES:
        row = summary[phase]
        if "ratio" in row:
            lo, hi = row["ratio_ci"]
            rr = row["ratio_rounds"]
            ratio = f"**{row['ratio']:.2f}** [{lo:.2f}, {hi:.2f}]" + (
                f" ({min(rr):.2f}-{max(rr):.2f})" if len(rr) > 1 else "")
        else:
            ratio = "-"
        lines.append(f"| {phase} | {cell(row, 'ours')} | {cell(row, 'trl')} | {ratio} |")
    lines += ["", "Same work on both sides (means over the timed steps):", "",
              "| | ours | TRL |", "|---|---|---|"]
    for key, label in (("answer_tokens", "answer tokens (mean)"), ("reward", "reward (mean)")):
        lines.append(f"| {label} | {_side_mean(runs, 'ours', key, warmup):.2f} | "
                     f"{_side_mean(runs, 'trl', key, warmup):.2f} |")
    lines += ["", "Runs in the order run (wall includes start-up):", "",
              "| round | side | steps | wall (s) | load before -> after |", "|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['round']} | {r['side']} | {len(r['steps'])} | {r['wall_s']:.0f} | "
                     f"{r.get('load', '')} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- the TRL worker
def trl_worker(spec_path: Path) -> None:
    """One TRL run (inside the environment with trl): trains, writes the timings as JSON."""
    global _POOL
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from strace_ds.data.tasks import generated_dataset
    from strace_ds.rewards import RewardPool

    spec = json.loads(spec_path.read_text())
    shape = Shape(**spec["shape"])
    problems = generated_dataset("synthetic", "train", DATASET_SIZE, spec["seed"])
    data = datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": ex.prompt}], "answer": ex.answer}
         for ex in problems.examples]  # fmt: skip
    )
    marks: list[list[float]] = []
    generations: list[dict] = []

    class Stamps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            marks.append([time.perf_counter(), float("nan")])

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            marks[-1][1] = time.perf_counter()

    pending: dict[str, float] = {}

    def timed_reward(prompts: list, completions: list, answer: list[str], **kw: Any
                     ) -> list[float]:  # fmt: skip
        t0 = time.perf_counter()
        rewards = math_verify_reward(prompts, completions, answer)
        pending["reward_s"] = time.perf_counter() - t0
        ids = kw.get("completion_ids") or []
        pending["answer_tokens"] = statistics.fmean(len(c) for c in ids) if ids else float("nan")
        pending["reward"] = statistics.fmean(rewards)
        return rewards

    timed_reward.__name__ = "math_verify"

    class TimedGRPOTrainer(trl.GRPOTrainer):
        def _generate(self, *a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return super()._generate(*a, **kw)
            finally:
                pending["generate_s"] = pending.get("generate_s", 0.0) + time.perf_counter() - t0

        def _generate_and_score_completions(self, *a: Any, **kw: Any) -> Any:
            pending.clear()
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(*a, **kw)
            if self.model.training:
                generations.append({"score_s": time.perf_counter() - t0, **pending})
            return out

    batching = trl_batching(shape)
    config = trl.GRPOConfig(
        output_dir=spec["output_dir"], max_steps=spec["steps"] * shape.updates,
        seed=spec["seed"], data_seed=spec["seed"], **batching,
        max_completion_length=shape.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=shape.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, beta=0.0,
        epsilon=0.2, loss_type="dapo", scale_rewards="group", bf16=torch.cuda.is_available(),
        fp16=False,
        use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,
        logging_steps=10**6, save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, remove_unused_columns=False,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["policy"])
    with RewardPool(num_workers=spec["reward_workers"], rewards="math_verify") as pool:
        _POOL = pool
        trainer = TimedGRPOTrainer(model=model, reward_funcs=timed_reward, args=config,
                                   train_dataset=data, processing_class=tokenizer,
                                   callbacks=[Stamps()])  # fmt: skip
        trainer.train()
    versions = {m.__name__: m.__version__ for m in (torch, transformers, trl, datasets)}
    Path(spec["out"]).write_text(json.dumps({"marks": marks, "generations": generations,
                                             "versions": versions}))  # fmt: skip


# ----------------------------------------------------------------------------------- main
TITLE = "# Ours (`--loss grpo`) vs TRL `GRPOTrainer`: speed"


def merge_section(existing: str | None, title: str, body: str) -> str:
    """``existing`` (a results file, or None) with its ``## title`` section replaced by
    ``body`` (added at the end when absent); the other sections are kept as they are."""
    head, sections = TITLE + "\n", {}
    if existing:
        parts = existing.split("\n## ")
        head = parts[0].rstrip("\n") + "\n"
        for part in parts[1:]:
            name, _, rest = part.partition("\n")
            sections[name.strip()] = rest.strip("\n") + "\n"
    sections[title] = body.strip("\n") + "\n"
    return head + "".join(f"\n## {name}\n\n{text}" for name, text in sections.items())


def _uptime_load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


def _versions(python: str) -> str:
    code = ("import importlib.metadata as m\n"
            "for p in ('torch', 'transformers', 'trl', 'deepspeed'):\n"
            "    try: print(p, m.version(p))\n"
            "    except Exception: print(p, 'absent')")  # fmt: skip
    out = subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.split()
    return ", ".join(f"{a} {b}" for a, b in zip(out[::2], out[1::2]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (ours and TRL)")
    p.add_argument("--steps", type=int, default=8, help="steps (generations) per run")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    p.add_argument("--long", action="store_true",
                   help=f"answers that run to --max-new-tokens (default {LONG_DEFAULT_TOKENS})")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer cap (default 40)")
    p.add_argument("--prompts", type=int, default=32, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="answers per prompt")
    p.add_argument("--updates", type=int, default=2, help="optimizer updates per step")
    p.add_argument("--micro", type=int, default=64, help="rows per forward/backward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward-workers", type=int, default=2, help="grading processes, each side")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    p.add_argument("--python", default=sys.executable, help="interpreter of our runs")
    p.add_argument("--trl-python", default=sys.executable, help="interpreter with trl")
    p.add_argument("--work", type=Path, default=REPO / "outputs" / "bench_vs_trl")
    p.add_argument("--write", action="store_true", help=f"write {RESULTS.relative_to(REPO)}")
    p.add_argument("--bootstrap-draws", type=int, default=BOOTSTRAP_DRAWS)
    p.add_argument("--trl-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.max_new_tokens is None:
        args.max_new_tokens = LONG_DEFAULT_TOKENS if args.long else 40
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    args.shape = Shape(args.prompts, args.group, args.max_new_tokens, args.updates, args.micro,
                       long=args.long)  # fmt: skip
    try:
        trl_batching(args.shape)
    except ValueError as err:
        p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.trl_worker is not None:
        trl_worker(args.trl_worker)
        return
    probe = subprocess.run([args.trl_python, "-c", "import trl"], capture_output=True)
    if probe.returncode:
        sys.exit(f"{args.trl_python} cannot import trl: make the environment of this script's "
                 "docstring (python -m benchmarks.bench_vs_trl --help; or pass --trl-python)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = (args.work / f"{'long' if args.long else 'default'}-{stamp}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    policy = policy_dir(args.long, args.work.resolve())
    runs = []
    for rnd in range(1, args.rounds + 1):
        for side in SIDES if rnd % 2 else SIDES[::-1]:
            before = _uptime_load()
            name = f"{side}-r{rnd}"
            fn = run_ours if side == "ours" else run_trl
            run = fn(args, args.shape, policy, name, work)
            run.update(round=rnd, load=f"{before} -> {_uptime_load()}")
            runs.append(run)
            (work / f"{name}.result.json").write_text(json.dumps(run) + "\n")
            print(f"round {rnd} {side}: {len(run['steps'])} steps, {run['wall_s']:.0f} s, "
                  f"load {run['load']}", flush=True)
    s = args.shape
    answers = ("every answer runs to the cap: the --long copy of the policy" if s.long
               else "the policy stops when it is done")  # fmt: skip
    context = {
        "shape": f"{s.prompts} prompts x {s.group} answers, at most {s.max_new_tokens} new tokens "
                 f"({answers}), {s.updates} updates per step in micro-batches of {s.micro}, "
                 f"float32, one process each, OMP_NUM_THREADS={args.threads}, "
                 f"{args.reward_workers} grading workers each, {args.steps} steps per run",
        "machine": f"{os.cpu_count()} CPUs; ours: {_versions(args.python)}; TRL side: "
                   f"{_versions(args.trl_python)}.",
    }  # fmt: skip
    text = report(runs, args.warmup, context, args.bootstrap_draws)
    cmdline = portable_cmdline(sys.argv[1:])
    title = "Long answers" if s.long else "Default shape"
    body = f"Made by `{cmdline}`; method in the script's docstring.\n\n{text}"
    doc = merge_section(None, title, body)
    (work / "report.md").write_text(doc)
    print(doc)
    if args.write:
        RESULTS.write_text(merge_section(RESULTS.read_text() if RESULTS.exists() else None,
                                         title, body))  # fmt: skip
        print(f"wrote the section {title!r} of {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
