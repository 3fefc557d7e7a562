"""The credit-assignment study (``benchmarks/credit_study.py``): its derived numbers on
hand-made records, and a smoke run of the real script that writes the report, the figure and
the summary, and resumes from its cache without training; plus the committed study's files."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "credit_study.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import credit_study  # noqa: E402


def _record(avgs: list[float], tokens: float = 100.0, seed: int = 0, preset: str = "grpo",
            regime: str = "on_policy", every: int = 4) -> dict:  # fmt: skip
    steps = every * (len(avgs) - 1)
    return {"preset": preset, "tag": preset, "regime": regime, "seed": seed,
            "evals": [{"step": every * i, "avg": a, "pass@4": min(1.0, 2 * a)}
                      for i, a in enumerate(avgs)],
            "steps": [{"reward/mean": 0.5, "policy/clip_frac_low": 0.01,
                       "policy/clip_frac_high": 0.02, "select/frac": 0.2}] * steps,
            "tokens_per_step": [tokens] * steps}  # fmt: skip


def test_crossing_interpolates_and_censors() -> None:
    r = _record([0.3, 0.35, 0.45])
    assert credit_study.crossing(r["evals"], 0.4) == pytest.approx(6.0)  # halfway 4..8
    assert credit_study.crossing(r["evals"], 0.3) == 0.0
    assert credit_study.crossing(r["evals"], 0.5) is None
    d = credit_study.derive(r, 0.5)
    assert d["censored"] and d["steps_to_threshold"] == 8.0  # the last step, a lower bound
    d = credit_study.derive(r, 0.4)
    assert not d["censored"] and d["tokens_to_threshold"] == pytest.approx(600.0)
    assert d["final"] == 0.45 and d["pass"] == {"pass@4": 0.9}
    assert d["clip_frac"] == pytest.approx(0.03) and d["select_frac"] == pytest.approx(0.2)


def test_paired_ratio_interval() -> None:
    point, lo, hi = credit_study.paired_ratio_ci([2.0, 4.0, 6.0, 8.0], [4.0, 8.0, 12.0, 16.0])
    assert point == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    point, lo, hi = credit_study.paired_ratio_ci([1.0, 3.0, 2.0, 6.0], [2.0, 2.0, 3.0, 3.0])
    assert lo < point < hi and point == pytest.approx(12 / 10)


def test_summary_compares_with_grpo_paired_by_seed() -> None:
    args = credit_study.parse_args(["--regimes", "on_policy", "--presets", "grpo,s_trace"])
    runs = [_record([0.3, 0.35, 0.4], seed=s) for s in range(4)]
    runs += [_record([0.3, 0.45, 0.5 + 0.01 * s], seed=s, preset="s_trace") for s in range(4)]
    summary = credit_study.summarise(args, runs)
    assert summary["threshold"] == pytest.approx(0.4)
    cells = summary["regimes"]["on_policy"]
    assert cells["grpo"]["reached"] == 4 and cells["grpo"]["steps_to_threshold"][0] == 8.0
    v = cells["s_trace"]["vs_grpo"]
    assert v["seeds"] == [0, 1, 2, 3]
    assert v["steps_ratio"][0] == pytest.approx((4 * 0.1 / 0.15) / 8)  # 2.67 steps vs 8
    m, lo, hi = v["final_diff"]
    assert m == pytest.approx(0.115) and 0.1 <= lo <= m <= hi <= 0.13
    text = credit_study.report(args, summary, None)
    assert "| s_trace | 4 |" in text and "| grpo | 4 |" in text


def _readme_commands() -> list[list[str]]:
    """The argv (after the script) of every command in the README's study code block."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Credit-assignment study", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    cmds = [shlex.split(line) for line in block.strip().splitlines()]
    assert cmds and all(c[:2] == ["python", "benchmarks/credit_study.py"] for c in cmds)
    return [c[2:] for c in cmds]


def _with_work(argv: list[str], work: Path) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--work":
            skip = True
        else:
            out.append(a)
    return [*out, "--work", str(work)]


@pytest.mark.slow
def test_readme_commands_at_smoke_size_write_results_and_resume(tmp_path: Path) -> None:
    """The README's study commands, in order, at smoke size (2 presets x 2 seeds x 2 regimes,
    2 steps, the grad phase, a 2-setting sweep) into a temporary work directory."""
    work = tmp_path / "study"
    small = ["--smoke", "--presets", "grpo,s_trace", "--seeds", "0,1",
             "--regimes", "on_policy,stale"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    commands = _readme_commands()
    assert any("--phase" in c and "sweep" in c for c in commands)
    assert any("--report-only" in c for c in commands)
    reports = []
    for argv in commands:
        cmd = [sys.executable, str(SCRIPT), *_with_work(argv, work), *small]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900,
                              cwd=REPO)  # fmt: skip
        assert proc.returncode == 0, (argv, proc.stderr[-3000:])
        reports.append((work / "results.md").read_text())
    cached = sorted((work / "cache").glob("chain-*.json"))
    assert len(cached) == 8 + 2  # the grid and the sweep
    summary = json.loads((work / "summary.json").read_text())
    assert set(summary["regimes"]) == {"on_policy", "stale"}
    assert set(summary["sweep"]) == {"s_trace-lam0.0-q0.2", "s_trace-lam0.95-q0.2"}
    assert set(summary["grad"]) == {"warm start", "after GRPO"}
    for res in summary["grad"].values():
        for g in res["presets"].values():
            assert all(-1.0 <= c <= 1.0 for c in g["cosine"])
    stale = json.loads(next(p for p in cached if "-stale-s_trace-s1-" in p.name).read_text())
    assert stale["steps"][-1]["rollout/staleness_mean"] > 0  # the stale regime is stale
    assert "--max_staleness" in stale["flags"] and len(stale["evals"]) == 3
    for cell in summary["regimes"]["on_policy"].values():
        assert len(cell["curve"]) == 3 and all(0 <= p["mean"] <= 1 for p in cell["curve"])
    png = (work / "credit_study.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "## Gradients" in reports[-1] and "lam x entropy_top_quantile" in reports[-1]
    stamp = [p.stat().st_mtime_ns for p in cached]
    again = subprocess.run(  # everything cached: nothing trains, the same report
        [sys.executable, str(SCRIPT), "--phase", "all", "--work", str(work), *small],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in cached] == stamp
    assert (work / "results.md").read_text() == reports[-1]


def test_committed_study_is_complete() -> None:
    """The committed default study: every grid run cached, with the shipped chain policy."""
    from strace_ds.tiny_chain import CHAIN_SHA256

    study = REPO / "benchmarks" / "credit_study"
    summary = json.loads((study / "summary.json").read_text())
    args = credit_study.parse_args([])
    grid = [json.loads(p.read_text()) for p in (study / "cache").glob("chain-*.json")]
    grid = [r for r in grid if r["tag"] == r["preset"]]
    assert {(r["regime"], r["preset"], r["seed"]) for r in grid} == {
        (reg, p, s) for reg in args.regimes for p in args.presets for s in args.seeds}
    assert all(r["policy_sha256"] == CHAIN_SHA256 for r in grid)
    assert set(summary["regimes"]) == set(args.regimes)
    assert (study / "credit_study.png").read_bytes()[:4] == b"\x89PNG"
