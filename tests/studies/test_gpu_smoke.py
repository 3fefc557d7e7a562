"""`benchmarks/gpu_smoke.py` without a GPU: its arithmetic, its failure checks, its CPU run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_smoke

REPO = Path(__file__).resolve().parents[2]


def test_model_flops_utilisation() -> None:
    # 6 * 1e9 params * 1e4 tokens = 6e13 FLOPs in 0.5 s = 1.2e14 FLOP/s, of 989e12.
    assert gpu_smoke.model_flops_utilisation(10**9, 1e4, 0.5) == pytest.approx(1.2e14 / 989e12)


def _result(**metrics) -> dict:
    base = {"perf/step_s": 2.0, "perf/train_s": 1.0, "perf/train_tokens_per_s": 1e4,
            "policy/loss": 0.1}  # fmt: skip
    return {"metrics": base | metrics, "peak_bytes": 2**31, "cuda": True, "device": "H200"}


def test_summary_figures_and_failures() -> None:
    s = gpu_smoke.summarise("m", 10**9, _result())
    assert s["peak_memory_gib"] == 2.0 and s["mfu"] == pytest.approx(6e13 / 989e12)
    with pytest.raises(RuntimeError, match="non-finite"):
        gpu_smoke.summarise("m", 10**9, _result(**{"policy/loss": math.nan}))
    broken = _result()
    del broken["metrics"]["perf/train_s"]
    with pytest.raises(RuntimeError, match="lack"):
        gpu_smoke.summarise("m", 10**9, broken)


@pytest.mark.slow
def test_cpu_dry_run_trains_the_random_model(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_smoke.py"), "--cpu", "--steps", "1",
         "--models", "random-tiny", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == []
    (run,) = summary["runs"]
    # Embedding 151,936 x 64 (tied) = 9,723,904; per layer q 64x64 + k, v 64x32 + o 64x64
    # = 12,288, q/k norms 32, MLP 3 x 64 x 192 = 36,864, two norms 128: 49,312; x 2 layers,
    # + final norm 64: 9,822,592.
    assert run["params"] == 9_822_592
    assert run["step_s"] > 0 and run["train_tokens_per_s"] > 0 and run["mfu"] is None
    assert (tmp_path / "models" / "random-tiny" / "tokenizer.json").exists()
