"""GRPO vs S-trace on the embedded default, over several seeds, with 95% intervals.

    python -m benchmarks.default_seeds [--seeds 0,1,2,3,4] [--losses grpo,s_trace] \\
        [--jobs 2] [--out benchmarks/results_default_seeds.md] [--work DIR] [-- TRAIN FLAGS]

Runs the default training job (``scripts/train.py`` with ``ds_configs/zero3.json``: the
pinned tiny policy, 30 steps of 32 prompts x 8 answers, held-out avg@4 at the start and the
end) once per (loss, seed), ``--jobs`` at a time with one thread each (the 2-core machine:
independent seeds two at a time). The seed moves the data order, the rollout sampling and the
evaluation samples; the policy is the same pinned artefact for every run. Reports, per loss,
the held-out accuracy at the end and its gain over the start as mean and a 95% t-interval over
seeds, and the paired difference between the losses (same seed, same data order) with its
interval. Finished runs are kept in ``--work`` and reused, so the study resumes and extends.
Not a test: a study.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Two-sided 97.5% quantiles of Student's t for n - 1 = 1..29 degrees of freedom.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045]


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and the 95% t-interval of the mean: ``(mean, low, high)``."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = _T975[min(len(values), 30) - 2] * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def run_one(loss: str, seed: int, work: Path, extra: list[str]) -> dict:
    """Train (or reuse) one run; return its start/end held-out accuracy and wall time."""
    name = f"{loss}-seed{seed}"
    result = work / f"{name}.json"
    if result.exists():
        return json.loads(result.read_text())
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"),
           "--ds_config", str(REPO / "ds_configs" / "zero3.json"), "--loss", loss,
           "--seed", str(seed), "--output_dir", str(work / "outputs"),
           "--log_dir", str(work / "runs"), "--export", "false", "--reward_workers", "1", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    from strace_ds.train.monitor import read_history

    history = read_history(work / "outputs" / name)  # the run's metrics.jsonl
    evals = [h for h in history if "eval_step" in h]
    rewards = [h["reward/mean"] for h in history if "reward/mean" in h]
    out = {"loss": loss, "seed": seed, "acc_start": evals[0]["eval/accuracy"],
           "acc_end": evals[-1]["eval/accuracy"], "reward_first": rewards[0],
           "reward_last5": statistics.fmean(rewards[-5:]),
           "wall_s": round(time.perf_counter() - t0, 1)}
    result.write_text(json.dumps(out) + "\n")
    return out


def report(runs: list[dict], losses: list[str], seeds: list[int]) -> str:
    by = {(r["loss"], r["seed"]): r for r in runs}

    def fmt(values: list[float], scale: float = 100.0) -> str:
        m, lo, hi = t_interval([scale * v for v in values])
        return f"{m:.1f} [{lo:.1f}, {hi:.1f}]"

    lines = [f"Seeds {','.join(map(str, seeds))}; mean [95% t-interval] over seeds, in points "
             "of held-out avg@4 (200 problems, temperature 1).", "",
             "| loss | start | end | gain | reward, last 5 steps | wall per run |",
             "|---|---|---|---|---|---|"]
    for loss in losses:
        rs = [by[(loss, s)] for s in seeds]
        lines.append(
            f"| `{loss}` | {fmt([r['acc_start'] for r in rs])} | {fmt([r['acc_end'] for r in rs])}"
            f" | {fmt([r['acc_end'] - r['acc_start'] for r in rs])}"
            f" | {fmt([r['reward_last5'] for r in rs])}"
            f" | {statistics.fmean(r['wall_s'] for r in rs):.0f} s |"
        )
    if len(losses) == 2:
        a, b = losses
        diff = [by[(b, s)]["acc_end"] - by[(a, s)]["acc_end"] for s in seeds]
        m, lo, hi = t_interval([100 * d for d in diff])
        verdict = ("no difference detectable" if lo <= 0 <= hi
                   else f"{b} higher" if lo > 0 else f"{a} higher")
        lines += ["", f"Paired difference `{b}` - `{a}` at the end (same seed): {m:+.1f} points, "
                  f"95% interval [{lo:+.1f}, {hi:+.1f}]: {verdict}.",
                  "Per seed: " + ", ".join(f"{100 * d:+.1f}" for d in diff) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--losses", default="grpo,s_trace")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--work", type=Path, default=REPO / "outputs" / "default_seeds")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results_default_seeds.md")
    args, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    seeds = [int(s) for s in args.seeds.split(",")]
    losses = args.losses.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = [(loss, seed) for seed in seeds for loss in losses]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda j: run_one(*j, args.work, extra), jobs))
    text = "# GRPO vs S-trace on the embedded default, over seeds\n\n" + report(runs, losses, seeds)
    if extra:
        text += f"\nExtra train flags: `{' '.join(extra)}`.\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
