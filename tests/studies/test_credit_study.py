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

from benchmarks import credit_study

REPO = Path(__file__).resolve().parents[2]
SCRIPT = ["-m", "benchmarks.credit_study"]  # run from the repository root


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
    args = credit_study.study_args(
        credit_study.parse_args(["--regimes", "on_policy", "--presets", "grpo,s_trace"]), "forms")
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
    assert "| s_trace | 0.0002 | 4 |" in text and "| grpo | 0.0002 | 4 |" in text


def test_learning_rates_are_picked_on_tuning_seeds_only() -> None:
    args = credit_study.study_args(credit_study.parse_args(["--presets", "grpo,p_trace@weight"]),
                                   "forms")
    assert args.tune_lrs == [1e-4, 2e-4, 4e-4] and args.tune_seeds == [100, 101]

    def tuning(method, lr, seed, last_two):
        r = _record([0.3, *last_two], seed=seed, preset=method)
        return {**r, "tag": f"{method}-lr{lr}"}

    runs = [tuning("grpo", 1e-4, s, [0.40, 0.44]) for s in (100, 101)]
    runs += [tuning("grpo", 2e-4, s, [0.50, 0.40]) for s in (100, 101)]  # mean 0.45: best
    runs += [tuning("grpo", 4e-4, 100, [0.10, 0.12])]
    runs += [tuning("p_trace@weight", 4e-4, 100, [0.5, 0.5])]
    picked = credit_study.pick_lrs(args, runs)
    assert picked["grpo"]["lr"] == 2e-4
    assert picked["grpo"]["scores"] == pytest.approx(
        {"0.0001": 0.42, "0.0002": 0.45, "0.0004": 0.11})
    assert picked["p_trace@weight"]["lr"] == 4e-4
    args.tuned_lr = {m: t["lr"] for m, t in picked.items()}
    flags = credit_study.run_flags(args, "off_policy", "p_trace@weight", 0)
    assert flags[flags.index("--lr") + 1] == "0.0004"
    assert flags[flags.index("--loss"):flags.index("--loss") + 4] == [
        "--loss", "p_trace", "--form", "weight"]
    with pytest.raises(SystemExit, match="tune_seeds"):
        credit_study.parse_args(["--tune_seeds", "0,100"])
    with pytest.raises(SystemExit, match="p_trace@product"):
        credit_study.parse_args(["--presets", "grpo,p_trace@product"])


def test_lam_check_runs_trace_methods_at_their_picked_rate() -> None:
    """The lam check varies ``lam`` of the trace methods only (GRPO has none), on the tuning
    seeds at each method's picked rate; its table reads the preset's own lam from the tuning
    run and lam 0 from GRPO's tuning run at that rate (lam 0 is GRPO in every form)."""
    args = credit_study.study_args(credit_study.parse_args(["--presets", "grpo,s_trace@weight"]),
                                   "forms")
    assert args.check_lams == [0.5, 0.99]
    args.tuned_lr = {"grpo": 2e-4, "s_trace@weight": 1e-4}
    jobs = credit_study.lam_jobs(args)
    assert [(j[1], j[2], j[3], j[4], j[6]) for j in jobs] == [
        ("s_trace@weight", seed, ["--lam", str(lam)], f"s_trace@weight-lam{lam}", 1e-4)
        for seed in (100, 101) for lam in (0.5, 0.99)]  # fmt: skip
    flags = credit_study.run_flags(args, *jobs[0][:3], extra=jobs[0][3], lr=jobs[0][6])
    assert flags[-2:] == ["--lam", "0.5"] and flags[flags.index("--lr") + 1] == "0.0001"

    def tagged(tag, seed, last_two):
        return {**_record([0.3, *last_two], seed=seed), "tag": tag}

    runs = [tagged("s_trace@weight-lr0.0001", s, [0.40, 0.42]) for s in (100, 101)]  # lam 0.95
    runs += [tagged("grpo-lr0.0001", s, [0.38, 0.40]) for s in (100, 101)]  # lam 0
    runs += [tagged("grpo-lr0.0002", s, [0.9, 0.9]) for s in (100, 101)]  # another rate: unread
    runs += [tagged("s_trace@weight-lam0.5", s, [0.44, 0.46]) for s in (100, 101)]
    runs += [tagged("s_trace@weight-lam0.99", 100, [0.2, 0.3])]
    check = credit_study.lam_check(args, runs)
    assert list(check) == ["s_trace@weight"]
    t = check["s_trace@weight"]
    assert t["lr"] == 1e-4 and t["lam"] == 0.95 and t["best"] == 0.5
    assert t["scores"] == pytest.approx({"0.0": 0.39, "0.5": 0.45, "0.95": 0.41, "0.99": 0.25})
    summary = {"regimes": {}, "threshold": 0.4, "sweep": {}, "lam_check": check}
    text = credit_study.report(args, summary, None)
    assert "| s_trace@weight | 0.0001 | 39.0 | **45.0** | 41.0 | 25.0 |" in text
    args.check_lams = []
    assert credit_study.lam_jobs(args) == []


def _readme_commands() -> list[list[str]]:
    """The argv (after the script) of every command in the study's code block of
    ``docs/RESULTS.md``."""
    text = (REPO / "docs" / "RESULTS.md").read_text()
    section = text.split("## Credit-assignment study", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    cmds = [shlex.split(line) for line in block.strip().splitlines()]
    assert cmds and all(c[:3] == ["python", "-m", "benchmarks.credit_study"] for c in cmds)
    return [c[3:] for c in cmds]


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
    """The study commands of docs/RESULTS.md, in order, at smoke size (2 methods x 2 seeds x
    2 regimes, 2 steps; the presets study with the grad phase and a 2-setting sweep; the forms
    study with its tuning runs and lam check; the long study on its own policy) into a temporary
    work directory."""
    work = tmp_path / "study"
    small = ["--smoke", "--presets", "grpo,s_trace@weight", "--seeds", "0,1",
             "--regimes", "on_policy,stale"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    commands = _readme_commands()
    assert any("--phase" in c and "sweep" in c for c in commands)
    assert any("--report-only" in c for c in commands)
    studies = {c[c.index("--study") + 1] for c in commands if "--study" in c}
    assert studies == set(credit_study.STUDIES)
    reports = []
    for argv in commands:
        cmd = [sys.executable, *SCRIPT, *_with_work(argv, work), *small]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900,
                              cwd=REPO)  # fmt: skip
        assert proc.returncode == 0, (argv, proc.stderr[-3000:])
        reports.append((work / "results.md").read_text())
    cached = sorted((work / "cache").glob("chain-*.json"))
    records = [json.loads(p.read_text()) for p in cached]
    tuning = [r for r in records if "-lr" in r["tag"]]
    assert len(tuning) == 2 * 2  # smoke: 2 rates x 1 tuning seed x 2 methods
    assert {r["seed"] for r in tuning} == {100} and {r["regime"] for r in tuning} == {"off_policy"}
    summary = json.loads((work / "summary.json").read_text())
    assert list(summary["studies"]) == ["presets", "forms", "ratio", "long"]
    # the second task shape trains its own shipped policy (smoke: its answers cut at 128 tokens)
    from strace_ds.assets import LONG_CHAIN_SPEC, shipped_chain_build

    long = [json.loads(p.read_text()) for p in (work / "cache").glob("chain_*.json")]
    assert len(long) == 2 * 2 * 2 and {r["task"] for r in long} == {LONG_CHAIN_SPEC}
    assert {r["policy_sha256"] for r in long} == {shipped_chain_build(LONG_CHAIN_SPEC).sha256}
    assert summary["studies"]["long"]["task"] == LONG_CHAIN_SPEC
    presets, forms = summary["studies"]["presets"], summary["studies"]["forms"]
    assert set(presets["regimes"]) == set(forms["regimes"]) == {"on_policy", "stale"}
    assert set(presets["sweep"]) == {"s_trace-lam0.0-q0.2", "s_trace-lam0.95-q0.2"}
    assert set(presets["grad"]) == {"warm start", "after GRPO"}
    assert not forms["sweep"] and forms["grad"] is None
    for res in presets["grad"].values():
        assert set(res["presets"]) == {"grpo", "s_trace@weight"}
        for g in res["presets"].values():
            assert all(-1.0 <= c <= 1.0 for c in g["cosine"])
    # the presets study runs every method at --lr; the forms study at each one's picked rate
    for method, t in forms["tuning"].items():
        assert t["lr"] in (1e-4, 2e-4) and set(t["scores"]) == {"0.0001", "0.0002"}
        for regime in ("on_policy", "stale"):
            assert forms["regimes"][regime][method]["lr"] == t["lr"]
            assert presets["regimes"][regime][method]["lr"] == 2e-4
    stale = next(r for r in records if r["regime"] == "stale" and r["preset"] == "s_trace@weight"
                 and r["seed"] == 1)  # fmt: skip
    assert stale["steps"][-1]["rollout/staleness_mean"] > 0  # the stale regime is stale
    assert "--max_staleness" in stale["flags"] and len(stale["evals"]) == 3
    assert stale["flags"][stale["flags"].index("--form") + 1] == "weight"
    for cell in forms["regimes"]["on_policy"].values():
        assert len(cell["curve"]) == 3 and all(0 <= p["mean"] <= 1 for p in cell["curve"])
        assert [p["answers"] for p in cell["curve"]] == [0, 16, 32]  # steps x 4 x 4 answers
        tokens = [p["tokens"] for p in cell["curve"]]
        assert tokens[0] == 0 < tokens[1] < tokens[2]
    for name in credit_study.FIGURES.values():
        png = (work / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    text = reports[-1]
    assert "## Gradients" in text and "lam x entropy_top_quantile" in text
    assert "## Learning-rate tuning" in text and "# Credit-assignment study `forms`" in text
    # the lam check: s_trace@weight at lam 0.5 and 0.99 on the tuning seed, at its picked rate
    lams = [r for r in records if "-lam" in r["tag"] and "@" in r["tag"]]
    assert sorted(r["tag"] for r in lams) == ["s_trace@weight-lam0.5", "s_trace@weight-lam0.99"]
    assert {r["lr"] for r in lams} == {forms["tuning"]["s_trace@weight"]["lr"]}
    assert set(forms["lam_check"]["s_trace@weight"]["scores"]) == {"0.0", "0.5", "0.95", "0.99"}
    assert "## lam check" in text
    stamp = [p.stat().st_mtime_ns for p in cached]
    again = subprocess.run(  # everything cached: nothing trains, the same report
        [sys.executable, *SCRIPT, "--phase", "all", "--work", str(work), *small],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in cached] == stamp
    assert (work / "results.md").read_text() == reports[-1]


def test_committed_study_is_complete() -> None:
    """The committed studies: every grid and tuning run cached, with its task's shipped chain
    policy, and each method of the forms study at the rate its tuning runs picked."""
    from strace_ds.assets import shipped_chain_build

    study = REPO / "benchmarks" / "credit_study"
    summary = json.loads((study / "summary.json").read_text())
    every = [json.loads(p.read_text()) for p in (study / "cache").glob("chain*.json")]
    assert all(r["policy_sha256"] == shipped_chain_build(r["task"]).sha256 for r in every)
    args = credit_study.parse_args([])
    assert list(summary["studies"]) == list(credit_study.STUDIES)
    for name, spec in credit_study.STUDIES.items():
        sub = credit_study.study_args(args, name)
        records = [r for r in every if r["task"] == sub.task]
        cells = summary["studies"][name]
        assert cells["task"] == sub.task == spec.get("task", "chain")
        lrs = {m: t["lr"] for m, t in (cells["tuning"] or {}).items()}
        grid = {(r["regime"], r["preset"], r["seed"]) for r in records
                if r["tag"] == r["preset"] and r["lr"] == lrs.get(r["preset"], sub.lr)}
        assert {(reg, p, s) for reg in spec["regimes"] for p in spec["presets"]
                for s in args.seeds} <= grid, name  # fmt: skip
        assert list(cells["regimes"]) == list(spec["regimes"])
        if spec["tune_lrs"]:
            tuned = {(r["preset"], r["lr"], r["seed"]) for r in records if "-lr" in r["tag"]}
            assert {(p, lr, s) for p in spec["presets"] for lr in spec["tune_lrs"]
                    for s in sub.tune_seeds} <= tuned, name  # fmt: skip
            assert not set(sub.tune_seeds) & set(args.seeds)
    for name in credit_study.FIGURES.values():
        assert (study / name).read_bytes()[:4] == b"\x89PNG"
