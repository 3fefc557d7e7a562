"""End-to-end training through the real CLI: DeepSpeed ZeRO-3 on CPU, 1 and 2 ranks.

Each run is a subprocess of ``scripts/train.py`` (or the ``deepspeed`` launcher) on a small
warm-started tiny policy, so these tests exercise exactly what a user runs.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers.train_run import SMALL, _comparable, _history, _scalars, _state, _train, _where

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def policy_dir(tiny_policy) -> Path:
    """The default warm-started policy: it earns some reward, so updates have signal."""
    return tiny_policy


def test_one_rank_run_logs_checkpoints_and_exports(policy_dir, tmp_path):
    _train(
        [
            *_where(policy_dir),
            "--run_name",
            "r1",
            "--loss",
            "s_trace",
            *SMALL,
        ],
        cwd=tmp_path,
    )
    scalars = _scalars(tmp_path / "runs" / "r1")
    for tag in (
        "reward/mean",
        "reward/accuracy",
        "advantage/zero_variance_frac",
        "response/length_mean",
        "response/length_max",
        "response/truncated_frac",
        "policy/loss",
        "policy/clip_frac_low",
        "policy/clip_frac_high",
        "trace/ratio_mean",
        "trace/ratio_max",
        "select/frac",
        "select/entropy_threshold",
        "policy/entropy_mean",
        "policy/approx_kl",
        "policy/grad_norm",
        "policy/lr",
        "perf/rollout_s",
        "perf/train_s",
        "perf/sync_s",
        "perf/rollout_tokens_per_s",
        "rollout/logprob_diff_mean",
        "rollout/logprob_diff_max",
        "eval/accuracy",
    ):
        assert tag in scalars, f"TensorBoard lacks {tag}"
    assert [s for s, _ in scalars["reward/mean"]] == [1, 2, 3]
    # S-trace selects the top 20% entropy tokens of the step (one quantile, ties kept).
    assert all(0.2 <= v < 0.3 for _, v in scalars["select/frac"])
    assert all(v > 0 for _, v in scalars["select/entropy_threshold"])
    # Rollout and trainer score the same weights: log-probs agree to float32 noise.
    assert all(v < 1e-3 for _, v in scalars["rollout/logprob_diff_max"])
    assert "credit/tokens" in scalars["__images__"]
    assert {"hist/advantages", "hist/entropy", "hist/trace_ratio"} <= set(scalars["__histograms__"])
    eval_steps = [s for s, _ in scalars["eval/accuracy"]]
    assert eval_steps == [0, 3]

    # the exported policy reloads with the Auto classes and equals the final checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = tmp_path / "out" / "r1" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    AutoTokenizer.from_pretrained(final)
    start = AutoModelForCausalLM.from_pretrained(policy_dir)
    moved = [
        n
        for n, p in model.named_parameters()
        if not torch.equal(p, dict(start.named_parameters())[n])
    ]
    assert moved, "training left every parameter unchanged"
    state = _state(tmp_path / "out" / "r1")
    assert state["step"] == 3 and len([h for h in state["history"] if "reward/mean" in h]) == 3


@pytest.mark.parametrize("form", ["gate", "weight"])
def test_trace_form_runs_and_logs_its_metrics(policy_dir, tmp_path, form):
    # --mini_batches 2: the second update of each step is off-policy, where the forms act
    _train([*_where(policy_dir), "--run_name", form, "--loss", "s_trace", "--form", form,
            "--image_every", "0", "--sample_every", "0", *SMALL[:SMALL.index("--image_every")],
            "--steps", "2", "--eval_every", "-1"], cwd=tmp_path)  # fmt: skip
    scalars = _scalars(tmp_path / "runs" / form)
    own = {"gate": ["trace/gated_frac"],
           "weight": ["trace/weight_mean", "trace/weight_max", "trace/weight_clipped_frac"]}
    other = own["weight" if form == "gate" else "gate"]
    for tag in own[form]:
        assert [s for s, _ in scalars[tag]] == [1, 2], tag
    assert not set(other) & set(scalars)  # NaN (not this form) is never logged
    if form == "weight":
        assert all(0.0 <= v <= 2.0 for _, v in scalars["trace/weight_mean"])
        assert any(v != 1.0 for _, v in scalars["trace/weight_max"])  # the second update moved
    else:
        assert all(0.0 <= v < 1.0 for _, v in scalars["trace/gated_frac"])
    assert all(abs(v) < 10 for _, v in scalars["policy/loss"])


def test_resume_is_exact(policy_dir, tmp_path):
    common = [
        *_where(policy_dir),
        "--loss",
        "p_trace",
        "--eval_every",
        "-1",
        "--export",
        "false",
        *SMALL,
    ]
    common[common.index("--steps") + 1] = "4"
    _train([*common, "--run_name", "straight"], cwd=tmp_path)
    _train([*common, "--run_name", "split", "--stop_after", "2"], cwd=tmp_path)
    assert _state(tmp_path / "out" / "split")["step"] == 2
    _train([*common, "--run_name", "split", "--resume", "auto"], cwd=tmp_path)
    straight = _comparable(_history(tmp_path / "out" / "straight"))  # metrics.jsonl
    split = _comparable(_history(tmp_path / "out" / "split"))
    assert len(straight) == 4
    assert split == straight
    # metrics.jsonl numbers the steps, and holds the checkpoint's history
    assert [r["step"] for r in _history(tmp_path / "out" / "split")] == [1, 2, 3, 4]
    assert [{k: v for k, v in r.items() if k != "step"}
            for r in _history(tmp_path / "out" / "straight")] == _state(
        tmp_path / "out" / "straight")["history"]  # fmt: skip
    # A relaunch without --resume, or a resume that changes the run, is refused in one line.
    again = _train([*common, "--run_name", "split"], cwd=tmp_path, check=False)
    assert again.returncode == 2, again.stderr[-2000:]
    assert "already holds checkpoints of a run; add --resume auto" in again.stderr
    changed = _train([*common, "--run_name", "split", "--resume", "auto", "--loss", "grpo"],
                     cwd=tmp_path, check=False)  # fmt: skip
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "loss: 'p_trace' -> 'grpo'" in changed.stderr
    assert "trace.lam: 0.95 -> 0.0" in changed.stderr and "--resume_override loss" in changed.stderr
    assert "Traceback" not in again.stderr + changed.stderr
    # Relaunching the finished run trains nothing and leaves its checkpoints untouched.
    ckpts = tmp_path / "out" / "split" / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()}
    again = _train([*common, "--run_name", "split", "--resume", "auto"], cwd=tmp_path)
    assert "already finished at step 4" in again.stdout + again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()} == before


@pytest.mark.skipif(
    shutil.which("deepspeed") is None and not (Path(sys.executable).parent / "deepspeed").exists(),
    reason="the deepspeed launcher is not installed",
)
def test_two_rank_launcher_run(policy_dir, tmp_path):
    launcher = [
        str(Path(sys.executable).parent / "deepspeed"),
        "--num_nodes",
        "1",
        "--num_gpus",
        "2",
        "--master_port",
        "29533",
    ]
    _train(
        [
            *_where(policy_dir),
            "--run_name",
            "r2",
            "--loss",
            "grpo",
            *SMALL,
        ],
        cwd=tmp_path,
        launcher=launcher,
    )
    state = _state(tmp_path / "out" / "r2")
    assert state["step"] == 3
    scalars = _scalars(tmp_path / "runs" / "r2")
    assert len(scalars["reward/mean"]) == 3
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "r2" / "final")
