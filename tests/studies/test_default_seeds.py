"""The multi-seed study script of docs/RESULTS.md (``benchmarks/default_seeds.py``): its
interval and verdict arithmetic, and a smoke run of the real script on a tiny budget."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "default_seeds.py"
MODULE = ["-m", "benchmarks.default_seeds"]  # as docs/RESULTS.md runs it, from the repo root


def _module():
    spec = importlib.util.spec_from_file_location("default_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_t_interval_is_the_student_t_interval():
    m = _module()
    values = [1.0, 2.0, 4.0, 3.0, 5.0]
    mean, lo, hi = m.t_interval(values)
    half = 2.776 * statistics.stdev(values) / 5**0.5  # t(0.975, 4 df)
    assert mean == 3.0 and lo == pytest.approx(3.0 - half) and hi == pytest.approx(3.0 + half)


def test_report_states_the_paired_verdict():
    m = _module()
    runs = [{"loss": loss, "seed": s, "acc_start": 0.3, "acc_end": end + 0.01 * s,
             "reward_last5": 0.5, "wall_s": 1.0}
            for s in range(5) for loss, end in (("grpo", 0.6), ("s_trace", 0.7))]  # fmt: skip
    text = m.report(runs, ["grpo", "s_trace"], list(range(5)))
    assert "+10.0 points" in text and "s_trace higher" in text
    runs = [dict(r, acc_end=0.6 + (0.02 if (r["seed"] + (r["loss"] == "grpo")) % 2 else 0.0))
            for r in runs]
    assert "no difference detectable" in m.report(runs, ["grpo", "s_trace"], list(range(5)))


@pytest.mark.slow
def test_smoke_run_writes_the_report_and_resumes(tmp_path):
    out, work = tmp_path / "report.md", tmp_path / "work"
    cmd = [sys.executable, *MODULE, "--seeds", "0,1", "--losses", "grpo,s_trace",
           "--work", str(work), "--out", str(out), "--", "--steps", "1",
           "--prompts_per_step", "4", "--group_size", "4", "--max_new_tokens", "24",
           "--eval_size", "8", "--micro_batch_size", "8"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "| `grpo` |" in text and "| `s_trace` |" in text and "Paired difference" in text
    runs = sorted(work.glob("*.json"))
    assert [p.name for p in runs] == [f"{loss}-seed{s}.json" for loss in ("grpo", "s_trace")
                                      for s in (0, 1)]  # fmt: skip
    for p in runs:
        r = json.loads(p.read_text())
        assert 0.0 <= r["acc_start"] <= 1.0 and 0.0 <= r["acc_end"] <= 1.0
    stamp = [p.stat().st_mtime_ns for p in runs]  # a rerun reuses the finished runs
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert again.returncode == 0 and [p.stat().st_mtime_ns for p in runs] == stamp
