"""Asynchronous training (``--max_staleness K``): step time and accuracy, side by side.

    python -m benchmarks.bench_async [--smoke] [--phase all|speed|acc] [--work DIR] [--out FILE]
        [--speed-rollout sglang|hf] [--sglang-python PY] [--speed-ks 0,1,2] [--speed-steps 12]
        [--speed-reps 2] [--losses grpo,p_trace,s_trace] [--ks 0,1,2]
        [--corrections token,sequence,trace] [--seeds 0,1,2,3,4] [--acc-steps 30] [--jobs 2]

Two studies of ``scripts/train.py`` (``ds_configs/zero3.json``, the pinned tiny policy):

1. **Speed**: ``s_trace`` at each ``--speed-ks`` K with a real SGLang server
   (``--rollout sglang --sglang-launch PY``; the default shape 32 prompts x 8 answers, 40 tokens,
   2 mini-batches), ``--eval_every -1``, ONE run at a time (never two at once: they would share
   the two cores), interleaved ``K0, K1, K2, K0, ...`` for ``--speed-reps`` rounds to show drift.
   ``uptime`` is recorded before and after each run. Per K: mean ``perf/step_s`` over steps
   ``--warmup + 1 .. N`` with a 95% t-interval over those steps, the producer's own
   ``perf/rollout_tokens_per_s``, the effective rate (generated tokens per step / step time),
   the trainer's and the generator's idle time, and the ratio of mean step time to K = 0.
2. **Accuracy** after the same number of steps (held-out avg@4 at the start and the end, as the
   default run): each ``--losses`` loss at each ``--ks`` K (seed 0), ``s_trace`` at the largest
   K with each ``--corrections`` behaviour correction (cap 2, truncate), and ``s_trace`` K = 0
   vs K = 1 over ``--seeds`` with the paired difference. These use the in-process engine
   (``--rollout hf``), ``--jobs`` at a time with one thread each: the staleness schedule (which
   policy version generates which step) is the same as with SGLang.

Every finished run is a JSON file in ``--work`` and is reused, so the study resumes and extends.
``--report-only`` rebuilds the tables from the cache without training. The tables go to
``--out`` (default ``outputs/bench_async/tables.md``); ``benchmarks/results_async.md`` is those
tables with the written verdict and method around them.
``--smoke`` shrinks everything (2 steps, 8 prompts x 4 answers, K 0 and 1) for the test.
Not a test: a study.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.default_seeds import t_interval

REPO = Path(__file__).resolve().parents[1]
SGLANG_PYTHON = Path.home() / ".cache" / "strace_ds" / "venv-sglang" / "bin" / "python"
STEP_KEYS = ("perf/step_s", "perf/rollout_s", "perf/train_s", "perf/old_logprob_s",
             "perf/sync_s", "perf/reward_s", "perf/rollout_tokens_per_s", "perf/trainer_idle_s",
             "perf/generator_idle_s", "rollout/staleness_mean", "rollout/staleness_max",
             "response/length_mean", "reward/mean", "behaviour/weight_mean",
             "behaviour/weight_max", "behaviour/clipped_frac", "behaviour/kl")  # fmt: skip
SMOKE = ["--prompts_per_step", "8", "--group_size", "4", "--max_new_tokens", "24",
         "--eval_size", "8", "--micro_batch_size", "16"]  # fmt: skip


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"


def load1(up: str) -> float:
    """The 1-minute load average of an ``uptime`` line (nan if absent)."""
    try:
        return float(up.split("load average:")[1].split(",")[0])
    except (IndexError, ValueError):
        return float("nan")


class LoadMonitor(threading.Thread):
    """Samples, every ``period`` s, the machine's busy CPU time outside the process tree of
    ``pid`` (other users' jobs competing with the timed run), in cores, and the load average."""

    def __init__(self, pid: int, period: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.period, self.stop = pid, period, threading.Event()
        self.external: list[float] = []
        self.loads: list[float] = []

    @staticmethod
    def _busy() -> float:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0.0)  # - idle, iowait

    def _tree(self) -> dict[int, float]:
        """utime + stime (clock ticks) of each live process of the tree."""
        procs = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    st = (d / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                procs[int(d.name)] = (int(st[1]), float(st[11]) + float(st[12]))
        tree = {self.pid}
        for _ in range(8):  # descendants, a few generations deep
            tree |= {p for p, (ppid, _) in procs.items() if ppid in tree}
        return {p: procs[p][1] for p in tree if p in procs}

    def run(self) -> None:
        try:
            hz, ncpu = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
            busy, tree, t = self._busy(), self._tree(), time.perf_counter()
            while not self.stop.wait(self.period):
                b2, tr2, t2 = self._busy(), self._tree(), time.perf_counter()
                # per process, so that a process exiting between samples does not count as
                # the others' load (its last interval is lost: a slight overestimate)
                own = sum(v - tree.get(p, 0.0) for p, v in tr2.items())
                ext = ((b2 - busy) - own) / hz / (t2 - t)
                self.external.append(min(max(ext, 0.0), float(ncpu)))
                self.loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
                busy, tree, t = b2, tr2, t2
        except (OSError, ValueError):  # no /proc: no monitoring
            pass


def train(name: str, work: Path, flags: list[str], monitor: dict | None = None):
    """Run ``scripts/train.py`` as run ``name``; return its history and wall seconds. With a
    ``monitor`` dict, fill it with the other load on the machine during the run."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for d in (work / "outputs" / name, work / "runs" / name):  # a half-done run starts over
        shutil.rmtree(d, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"),
           "--ds_config", str(REPO / "ds_configs" / "zero3.json"), "--run_name", name,
           "--output_dir", str(work / "outputs"), "--log_dir", str(work / "runs"),
           "--export", "false", "--reward_workers", "1", *flags]  # fmt: skip
    (work / "logs").mkdir(exist_ok=True)
    log = work / "logs" / f"{name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        mon = LoadMonitor(proc.pid)
        if monitor is not None:
            mon.start()
        rc = proc.wait()
        mon.stop.set()
    wall = time.perf_counter() - t0
    if monitor is not None:
        mon.join()
        ext = mon.external
        monitor.update(external_cores_mean=statistics.fmean(ext) if ext else None,
                       external_cores_max=max(ext) if ext else None,
                       external_cores_median=statistics.median(ext) if ext else None,
                       load1_mean=statistics.fmean(mon.loads) if mon.loads else None)  # fmt: skip
    if rc:
        raise RuntimeError(f"{name} failed (rc {rc}):\n{log.read_text()[-4000:]}")
    from strace_ds.train.monitor import read_history

    return read_history(work / "outputs" / name), wall  # the run's metrics.jsonl


REPORT_ONLY = False  # --report-only: never train, report the cached runs


def cached(work: Path, name: str, make) -> dict | None:
    path = work / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    if REPORT_ONLY:
        return None
    out = make()
    path.write_text(json.dumps(out) + "\n")
    return out


# ---------------------------------------------------------------------------------- speed
def speed_run(k: int, rep: int, args, work: Path) -> dict:
    name = f"speed-{args.speed_rollout}-K{k}-r{rep}"

    def make() -> dict:
        flags = ["--loss", "s_trace", "--seed", "0", "--steps", str(args.speed_steps),
                 "--eval_every", "-1", "--max_staleness", str(k), *args.size]  # fmt: skip
        if args.speed_rollout == "sglang":
            flags += ["--rollout", "sglang", "--sglang-launch", str(args.sglang_python)]
        before, load = uptime(), {}
        history, wall = train(name, work, flags, monitor=load)
        steps = [{key: h[key] for key in STEP_KEYS if key in h}
                 for h in history if "perf/step_s" in h]  # fmt: skip
        return {
            "k": k,
            "rep": rep,
            "rollout": args.speed_rollout,
            "steps": steps,
            "uptime_before": before,
            "uptime_after": uptime(),
            **load,
            "wall_s": round(wall, 1),
        }

    return cached(work, name, make)


def _timed(run: dict, warmup: int) -> list[dict]:
    steps = run["steps"]
    return steps[warmup:] if len(steps) > warmup else steps


def _mean(steps: list[dict], key: str) -> float:
    vals = [s[key] for s in steps if key in s]
    return statistics.fmean(vals) if vals else float("nan")


def _idle(steps: list[dict], key: str) -> str:
    """Mean idle seconds, or a dash where not logged (K = 0: nothing runs in the background)."""
    m = _mean(steps, key)
    return "-" if m != m else f"{m:.2f}"


def _gen_tokens(s: dict) -> float:
    return s["perf/rollout_tokens_per_s"] * s["perf/rollout_s"]


def speed_report(runs: list[dict], ks: list[int], warmup: int) -> str:
    def row(label: str, rs: list[dict]) -> tuple[str, float]:
        steps = [s for r in rs for s in _timed(r, warmup)]
        m, lo, hi = t_interval([s["perf/step_s"] for s in steps])
        eff = statistics.fmean(_gen_tokens(s) for s in steps) / m
        cells = [label, f"{len(steps)}", f"{m:.2f} [{lo:.2f}, {hi:.2f}]",
                 f"{_mean(steps, 'perf/rollout_s'):.2f}", f"{_mean(steps, 'perf/train_s'):.2f}",
                 f"{_mean(steps, 'perf/old_logprob_s'):.2f}", f"{_mean(steps, 'perf/sync_s'):.3f}",
                 f"{_mean(steps, 'perf/rollout_tokens_per_s'):.0f}", f"{eff:.0f}",
                 _idle(steps, "perf/trainer_idle_s"), _idle(steps, "perf/generator_idle_s"),
                 f"{_mean(steps, 'rollout/staleness_mean'):.2f}"]  # fmt: skip
        return "| " + " | ".join(cells) + " |", m

    head = ["| run | steps timed | step_s mean [95% CI] | rollout_s | train_s | old_logprob_s | "
            "sync_s | producer tok/s | effective tok/s | trainer idle s | generator idle s | "
            "staleness |", "|" + "---|" * 12]  # fmt: skip
    lines = [f"Steps {warmup + 1}..N of each run are timed (the first {warmup} warm up); "
             "interval: 95% t over the timed steps. Effective tok/s = mean generated tokens "
             "per step / mean step time; producer tok/s = `perf/rollout_tokens_per_s` (the "
             "generator's own rate while generating). Idle: `perf/trainer_idle_s` (trainer "
             "waiting for answers or for the producer to reach a sync point) and "
             "`perf/generator_idle_s` (producer blocked by the staleness bound or a sync); "
             "only logged for K >= 1.", "", "Per run, in the order run:", "", *head]  # fmt: skip
    for r in sorted(runs, key=lambda r: (r["rep"], ks.index(r["k"]))):
        lines.append(row(f"K={r['k']} round {r['rep']}", [r])[0])
    lines += ["", "Pooled over rounds:", "", *head]
    means = {}
    for k in ks:
        if not any(r["k"] == k for r in runs):
            continue
        text, means[k] = row(f"K={k}", [r for r in runs if r["k"] == k])
        lines.append(text)
    if 0 in means:
        lines += ["", "Mean step time relative to K = 0 (issue target for K = 1: <= 0.75x):", ""]
        for k in ks:
            if k == 0 or k not in means:
                continue
            per = []
            for rep in sorted({r["rep"] for r in runs}):
                a = [r for r in runs if r["k"] == 0 and r["rep"] == rep]
                b = [r for r in runs if r["k"] == k and r["rep"] == rep]
                if a and b:
                    ma = statistics.fmean(s["perf/step_s"] for s in _timed(a[0], warmup))
                    mb = statistics.fmean(s["perf/step_s"] for s in _timed(b[0], warmup))
                    per.append(f"round {rep}: {mb / ma:.2f}x")
            verdict = "" if k != 1 else (" (target met)" if means[1] / means[0] <= 0.75
                                         else " (target NOT met)")  # fmt: skip
            lines.append(
                f"- K={k}/K=0: **{means[k] / means[0]:.2f}x** pooled{verdict}; " + ", ".join(per)
            )

    def num(v, fmt=".2f"):
        return "-" if v is None else format(v, fmt)

    lines += ["", "Machine load per run: `uptime` before and after; while it ran, the mean 1-min "
              "load average and the CPU used by processes outside the run's own process tree "
              "(other jobs on the machine, in cores of the 2; sampled every 2 s from /proc).", "",
              "| run | started | wall (incl. start-up) | load before -> after | load during | "
              "other CPU mean / median / max (cores) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(runs, key=lambda r: (r["rep"], ks.index(r["k"]))):
        lines.append(
            f"| K={r['k']} round {r['rep']} | {r['uptime_before'].split()[0]} | "
            f"{r['wall_s']:.0f} s | {load1(r['uptime_before']):.2f} -> "
            f"{load1(r['uptime_after']):.2f} | {num(r.get('load1_mean'))} | "
            f"{num(r.get('external_cores_mean'))} / {num(r.get('external_cores_median'))} / "
            f"{num(r.get('external_cores_max'))} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- accuracy
def acc_run(loss: str, k: int, corr: str, seed: int, args, work: Path) -> dict:
    name = f"acc-{loss}-K{k}-{corr}-seed{seed}"

    def make() -> dict:
        flags = ["--loss", loss, "--seed", str(seed), "--steps", str(args.acc_steps),
                 "--max_staleness", str(k), "--rollout", "hf", *args.size]  # fmt: skip
        if corr != "none":
            flags += ["--behaviour_correction", corr, "--behaviour_cap", "2",
                      "--behaviour_mode", "truncate"]  # fmt: skip
        history, wall = train(name, work, flags)
        evals = [h for h in history if "eval_step" in h]
        steps = [h for h in history if "reward/mean" in h]
        out = {"loss": loss, "k": k, "corr": corr, "seed": seed,
               "acc_start": evals[0]["eval/accuracy"], "acc_end": evals[-1]["eval/accuracy"],
               "reward_last5": statistics.fmean(h["reward/mean"] for h in steps[-5:]),
               "wall_s": round(wall, 1)}  # fmt: skip
        for key in (
            "behaviour/weight_mean",
            "behaviour/weight_max",
            "behaviour/clipped_frac",
            "behaviour/kl",
            "rollout/staleness_mean",
            "perf/step_s",
        ):
            vals = [h[key] for h in steps if key in h and h[key] == h[key]]
            out[key] = statistics.fmean(vals) if vals else None
        return out

    return cached(work, name, make)


def _pts(values: list[float]) -> str:
    m, lo, hi = t_interval([100 * v for v in values])
    return f"{m:.1f}" if len(values) < 2 else f"{m:.1f} [{lo:.1f}, {hi:.1f}]"


def acc_report(runs: list[dict], args) -> str:
    by = {(r["loss"], r["k"], r["corr"], r["seed"]): r for r in runs}
    g = args.seeds[0]
    lines = [f"Held-out avg@4 in points ({args.eval_desc}), after {args.acc_steps} steps; "
             f"in-process engine (`--rollout hf`), {args.jobs} runs at a time, one thread each. "
             f"Grid: one seed ({g}) per cell, so differences of a few points are within "
             "seed noise (the 5-seed study of `results_default_seeds.md` has a seed-to-seed "
             "spread of ~3-4 points).", "",
             "| loss | K | start | end | gain | reward, last 5 steps | step_s (hf) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for loss in args.losses:
        for k in args.ks:
            r = by.get((loss, k, "none", g))
            if r is None:
                lines.append(f"| `{loss}` | {k} | not run | | | | |")
                continue
            lines.append(
                f"| `{loss}` | {k} | {100 * r['acc_start']:.1f} | {100 * r['acc_end']:.1f}"
                f" | {100 * (r['acc_end'] - r['acc_start']):+.1f} | "
                f"{100 * r['reward_last5']:.1f} | {r['perf/step_s']:.2f} |"
            )
    kc = max(args.ks)
    if args.corrections:
        lines += ["", f"`s_trace` at K = {kc} with a behaviour correction (cap 2, truncate), "
                  f"seed {g}; behaviour metrics are means over the steps:", "",
                  "| correction | end | gain | weight_mean | weight_max | clipped_frac | kl |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip

        def f(v, fmt=".3f"):
            return "n/a" if v is None else format(v, fmt)

        for corr in ["none", *args.corrections]:
            r = by.get(("s_trace", kc, corr, g))
            if r is None:
                lines.append(f"| `{corr}` | not run | | | | | |")
                continue
            lines.append(
                f"| `{corr}` | {100 * r['acc_end']:.1f} | "
                f"{100 * (r['acc_end'] - r['acc_start']):+.1f} | "
                f"{f(r['behaviour/weight_mean'])} | {f(r['behaviour/weight_max'])} | "
                f"{f(r['behaviour/clipped_frac'], '.4f')} | "
                f"{f(r['behaviour/kl'], '.2e')} |"
            )
    seeds = [s for s in args.seeds if ("s_trace", 0, "none", s) in by
             and ("s_trace", 1, "none", s) in by]  # fmt: skip
    if len(seeds) < 2:
        lines += ["", f"`s_trace` K = 0 vs K = 1: only {len(seeds)} paired seed(s) run so far."]
        return "\n".join(lines) + "\n"
    a = [by[("s_trace", 0, "none", s)] for s in seeds]
    b = [by[("s_trace", 1, "none", s)] for s in seeds]
    diff = [y["acc_end"] - x["acc_end"] for x, y in zip(a, b)]
    m, lo, hi = t_interval([100 * d for d in diff])
    verdict = ("no difference detectable" if lo <= 0 <= hi
               else "K=1 higher" if lo > 0 else "K=1 LOWER (accuracy loss)")  # fmt: skip
    lines += ["", f"`s_trace` K = 0 vs K = 1, seeds {','.join(map(str, seeds))} "
              "(mean [95% t-interval] over seeds):", "",
              "| K | start | end | gain |", "|---|---|---|---|",
              f"| 0 | {_pts([r['acc_start'] for r in a])} | {_pts([r['acc_end'] for r in a])} | "
              f"{_pts([r['acc_end'] - r['acc_start'] for r in a])} |",
              f"| 1 | {_pts([r['acc_start'] for r in b])} | {_pts([r['acc_end'] for r in b])} | "
              f"{_pts([r['acc_end'] - r['acc_start'] for r in b])} |", "",
              f"Paired difference K=1 - K=0 at the end (same seed): {m:+.1f} points, 95% "
              f"interval [{lo:+.1f}, {hi:+.1f}]: {verdict}. Per seed: "
              + ", ".join(f"{100 * d:+.1f}" for d in diff) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for the test")
    p.add_argument("--phase", choices=("all", "speed", "acc"), default="all")
    p.add_argument("--work", type=Path, default=REPO / "outputs" / "bench_async")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_async" / "tables.md")
    p.add_argument("--speed-rollout", choices=("sglang", "hf"), default="sglang")
    p.add_argument("--sglang-python", type=Path, default=SGLANG_PYTHON)
    p.add_argument("--speed-ks", default=None)
    p.add_argument("--speed-steps", type=int, default=None)
    p.add_argument("--speed-reps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    p.add_argument("--losses", default=None)
    p.add_argument("--ks", default=None)
    p.add_argument("--corrections", default=None)
    p.add_argument("--seeds", default=None)
    p.add_argument("--acc-steps", type=int, default=None)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="report cached runs; run none")
    args = p.parse_args()
    smoke = args.smoke
    global REPORT_ONLY
    REPORT_ONLY = args.report_only
    defaults = {
        "speed_ks": "0,1" if smoke else "0,1,2",
        "speed_steps": 2 if smoke else 12,
        "speed_reps": 1 if smoke else 2,
        "losses": "s_trace" if smoke else "grpo,p_trace,s_trace",
        "ks": "0,1" if smoke else "0,1,2",
        "corrections": "token" if smoke else "token,sequence,trace",
        "seeds": "0,1" if smoke else "0,1,2,3,4",
        "acc_steps": 2 if smoke else 30,
    }
    for key, val in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    args.speed_ks = [int(k) for k in args.speed_ks.split(",")]
    args.ks = [int(k) for k in args.ks.split(",")]
    args.losses = args.losses.split(",")
    args.corrections = [c for c in args.corrections.split(",") if c and c != "none"]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.size = SMOKE if smoke else []
    args.eval_desc = "8 problems" if smoke else "200 problems, temperature 1"
    if not ({0, 1} <= set(args.ks) and "s_trace" in args.losses):
        p.error("--ks must include 0 and 1 and --losses s_trace (the paired K=1 vs K=0 study)")
    work = args.work / ("smoke" if smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    parts = []
    cmdline = " ".join(["python", "-m", "benchmarks.bench_async", *sys.argv[1:]])
    if args.phase in ("all", "speed"):
        print(f"speed runs, one at a time; {uptime()}", flush=True)
        runs = []
        for rep in range(1, args.speed_reps + 1):
            for k in args.speed_ks:
                run = speed_run(k, rep, args, work)
                if run is None:
                    continue
                runs.append(run)
                print(f"  K={k} round {rep}: {runs[-1]['wall_s']} s; {uptime()}", flush=True)
        # The SGLang env by name, not its absolute path: reports are committed.
        engine = ("SGLang server (`--rollout sglang --sglang-launch "
                  "$STRACE_DS_SGLANG_PYTHON`)" if args.speed_rollout == "sglang"
                  else "in-process engine (`--rollout hf`)")  # fmt: skip
        parts.append(
            f"## Speed: `s_trace`, {engine}, {args.speed_steps} steps per run\n\n"
            + speed_report(runs, args.speed_ks, args.warmup)
        )
    if args.phase in ("all", "acc"):
        # the key claim first (s_trace K=0 vs K=1 over seeds), then corrections, then the grid
        jobs = [("s_trace", k, "none", s) for s in args.seeds for k in (0, 1)]
        jobs += [("s_trace", max(args.ks), c, args.seeds[0]) for c in args.corrections]
        jobs += [(loss, k, "none", args.seeds[0]) for loss in args.losses for k in args.ks]
        jobs = list(dict.fromkeys(jobs))
        print(f"accuracy runs: {len(jobs)}, {args.jobs} at a time; {uptime()}", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = [r for r in pool.map(lambda j: acc_run(*j, args, work), jobs) if r]
        parts.append("## Accuracy after the same number of steps\n\n" + acc_report(runs, args))
    text = (
        "# Asynchronous training (`--max_staleness K`)\n\n"
        f"Generated by `{cmdline}` (runs cached in `{work}`).\n\n" + "\n".join(parts)
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
