"""The asynchronous-training study (``benchmarks/bench_async.py``): a smoke run of the real
script, in-process engine only, that writes the report with its tables and resumes from cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = ["-m", "benchmarks.bench_async"]  # run from the repository root


@pytest.mark.slow
def test_smoke_run_writes_the_report_and_resumes(tmp_path):
    out, work = tmp_path / "report.md", tmp_path / "work"
    # --smoke: 2 steps of 8 prompts x 4 answers, K 0 and 1, s_trace, seeds 0 and 1, one
    # correction; the speed study with the in-process engine instead of an SGLang server.
    cmd = [sys.executable, *SCRIPT, "--smoke", "--speed-rollout", "hf",
           "--work", str(work), "--out", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "## Speed" in text and "## Accuracy" in text
    assert "| K=0 round 1 |" in text and "| K=1 round 1 |" in text and "K=1/K=0:" in text
    assert "| `s_trace` | 0 |" in text and "| `s_trace` | 1 |" in text
    assert "| `token` |" in text and "Paired difference K=1 - K=0" in text
    runs = sorted((work / "smoke").glob("*.json"))
    assert [p.name for p in runs] == sorted(
        ["speed-hf-K0-r1.json", "speed-hf-K1-r1.json", "acc-s_trace-K0-none-seed0.json",
         "acc-s_trace-K1-none-seed0.json", "acc-s_trace-K1-token-seed0.json",
         "acc-s_trace-K0-none-seed1.json", "acc-s_trace-K1-none-seed1.json"]
    )  # fmt: skip
    speed = json.loads((work / "smoke" / "speed-hf-K1-r1.json").read_text())
    assert len(speed["steps"]) == 2 and speed["steps"][-1]["rollout/staleness_max"] == 1.0
    assert "perf/generator_idle_s" in speed["steps"][-1]
    for p in runs:
        r = json.loads(p.read_text())
        if "acc_end" in r:
            assert 0.0 <= r["acc_start"] <= 1.0 and 0.0 <= r["acc_end"] <= 1.0
    stamp = [p.stat().st_mtime_ns for p in runs]  # a rerun reuses the finished runs
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in runs] == stamp and out.read_text() == text
