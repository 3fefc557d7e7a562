"""--report_to: W&B and MLflow receive exactly the scalars TensorBoard does, under the same
names and steps; a tracker that is not installed or not known is refused in one line."""

from __future__ import annotations

import importlib.util
import math

import pytest
from helpers.tracker_logs import mlflow_scalars, offline_trackers, wandb_offline_scalars
from helpers.train_run import _scalars

from strace_ds.config import TrainConfig
from strace_ds.train.monitor import Monitor

STEPS = {
    0: {"eval/accuracy": 0.25, "eval/synthetic/pass@2": 0.5},
    1: {"reward/mean": 0.5, "policy/loss": -0.125, "select/frac": math.nan},
    2: {"reward/mean": 0.75, "policy/loss": 0.0625, "perf/step_s": 3.0},
}


def test_monitor_sends_the_same_scalars_to_every_tracker(tmp_path, monkeypatch):
    uri = offline_trackers(monkeypatch, tmp_path)
    log_dir = tmp_path / "runs" / "r"
    mon = Monitor(log_dir, report_to="tensorboard,wandb,mlflow", run_name="r",
                  params={"lr": 0.001, "loss": "p_trace"})  # fmt: skip
    for step, values in STEPS.items():
        mon.scalars(values, step)
    mon.scalars({"eval/accuracy": 0.5}, 2)  # a second call at one step
    mon.close()
    expected = {
        "eval/accuracy": [(0, 0.25), (2, 0.5)],
        "reward/mean": [(1, 0.5), (2, 0.75)],
        "policy/loss": [(1, -0.125), (2, 0.0625)],
        "perf/step_s": [(2, 3.0)],
    }  # NaN (select/frac) is skipped by all alike
    tb = {k: v for k, v in _scalars(log_dir).items() if not k.startswith("__")}
    assert tb == {**expected, "eval/synthetic/pass@2": [(0, 0.5)]}
    assert wandb_offline_scalars(log_dir) == tb
    # MLflow refuses '@' in a name: written '_at_' there
    assert mlflow_scalars(uri, "r") == {**expected, "eval/synthetic/pass_at_2": [(0, 0.5)]}


def test_only_the_named_trackers_write(tmp_path):
    mon = Monitor(tmp_path / "r", report_to="tensorboard")
    mon.scalars({"a": 1.0}, 1)
    mon.close()
    assert mon.trackers == [] and list((tmp_path / "r").glob("events.out.tfevents.*"))
    assert not (tmp_path / "r" / "wandb").exists()


def test_unknown_or_missing_trackers_are_refused_naming_the_field_and_extra(monkeypatch):
    assert TrainConfig().report_to == "tensorboard"
    with pytest.raises(ValueError, match=r"report_to: unknown tracker 'neptune'; use one or more "
                       r"of tensorboard, wandb, mlflow"):  # fmt: skip
        TrainConfig(report_to="tensorboard,neptune")
    with pytest.raises(ValueError, match="report_to names no tracker"):
        TrainConfig(report_to=" , ")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("wandb", "mlflow") else real(name, *a))
    for name in ("wandb", "mlflow"):
        with pytest.raises(ValueError) as err:
            TrainConfig(report_to=f"tensorboard,{name}")
        assert str(err.value) == (
            f"report_to names {name}, but {name} is not installed: pip install -e '.[{name}]' "
            f"-c constraints/cpu.txt (or pip install {name}), or leave {name} out of --report_to"
        )
