"""``scripts/train.py --report_to tensorboard,wandb,mlflow``: W&B (offline) and MLflow (a local
file store) hold the very scalars TensorBoard does, under the same names and steps."""

from __future__ import annotations

import math

import pytest
from helpers.tracker_logs import mlflow_scalars, offline_trackers, wandb_offline_scalars
from helpers.train_run import SMALL, _scalars, _train, _where

pytestmark = pytest.mark.slow


def test_a_run_reports_the_same_scalars_to_every_tracker(tiny_policy, tmp_path, monkeypatch):
    uri = offline_trackers(monkeypatch, tmp_path)
    args = [*_where(tiny_policy), *SMALL, "--run_name", "tracked", "--export", "false",
            "--eval_size", "8", "--report_to", "tensorboard,wandb,mlflow"]  # fmt: skip
    args[args.index("--steps") + 1] = "2"
    _train(args, cwd=tmp_path)
    log_dir = tmp_path / "runs" / "tracked"
    tb = {k: v for k, v in _scalars(log_dir).items() if not k.startswith("__")}
    assert {"reward/mean", "policy/loss", "eval/accuracy", "perf/step_s"} <= set(tb)
    assert [s for s, _ in tb["reward/mean"]] == [1, 2]
    assert [s for s, _ in tb["eval/accuracy"]] == [0, 2]
    assert "eval/synthetic/avg@4" in tb and "eval/synthetic/pass@4" in tb  # MLflow refuses @
    in_mlflow = mlflow_scalars(uri, "tracked")
    assert "eval/synthetic/avg_at_4" in in_mlflow  # written '_at_' there
    in_mlflow = {k.replace("_at_", "@"): v for k, v in in_mlflow.items()}
    for name, logged in (("wandb", wandb_offline_scalars(log_dir)), ("mlflow", in_mlflow)):
        assert set(logged) == set(tb), (name, set(logged) ^ set(tb))
        for key, points in tb.items():
            assert [s for s, _ in logged[key]] == [s for s, _ in points], (name, key)
            # TensorBoard keeps float32; the others the float64 the trainer computed
            for (_, got), (_, want) in zip(logged[key], points):
                assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6), (name, key, got, want)
