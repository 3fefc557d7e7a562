"""Experiment trackers beside TensorBoard: Weights & Biases and MLflow (``--report_to``).

Each receives exactly the scalars :meth:`strace_ds.train.monitor.Monitor.scalars` writes, under
the same names and steps; histograms, texts and figures stay TensorBoard's. A tracker's package
is imported only when the run names it, so neither is a dependency of the project: they are the
pip extras ``wandb`` and ``mlflow``. Where they write follows their own environment variables
(``WANDB_MODE``, ``WANDB_PROJECT``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``, ...).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

TRACKERS: tuple[str, ...] = ("tensorboard", "wandb", "mlflow")
"""The names ``--report_to`` accepts."""

EXTRAS: dict[str, tuple[str, str]] = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
"""Tracker -> (the module it imports, the pip extra that installs it)."""

DEFAULT_PROJECT = "strace_ds"
"""The W&B project and MLflow experiment of a run whose environment names none."""


def parse_trackers(report_to: str) -> list[str]:
    """The tracker names of ``--report_to`` (comma-separated, each once, in order)."""
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    return list(dict.fromkeys(names))


def check_trackers(report_to: str) -> None:
    """Raise ``ValueError`` naming ``report_to`` for an unknown tracker or one whose package is
    not installed (naming the pip extra that installs it)."""
    names = parse_trackers(report_to)
    if not names:
        raise ValueError(
            f"report_to names no tracker ({report_to!r}); use one or more of "
            f"{', '.join(TRACKERS)}, comma-separated"
        )
    for name in names:
        if name not in TRACKERS:
            raise ValueError(
                f"report_to: unknown tracker {name!r}; use one or more of {', '.join(TRACKERS)}, "
                "comma-separated"
            )
        if name in EXTRAS:
            module, extra = EXTRAS[name]
            if importlib.util.find_spec(module) is None:
                raise ValueError(
                    f"report_to names {name}, but {module} is not installed: pip install -e "
                    f"'.[{extra}]' -c constraints/cpu.txt (or pip install {module}), or leave "
                    f"{name} out of --report_to"
                )


def mlflow_name(name: str) -> str:
    """The MLflow name of a scalar: MLflow refuses ``@`` (``eval/<bench>/avg@k``), written
    ``_at_``, and any other character outside letters, digits and ``_-. :/``, written ``_``."""
    return re.sub(r"[^\w\-. :/]", "_", name.replace("@", "_at_"))


class WandbTracker:
    """One W&B run per launch (``wandb.init``), named like the run; files under ``log_dir``."""

    def __init__(self, log_dir: Path, run_name: str, params: dict[str, Any]) -> None:
        import os

        import wandb

        log_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
            name=run_name,
            dir=str(log_dir),
            config=params,
            reinit="create_new",
        )

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """One MLflow run per launch, named like the run, in the experiment of
    ``MLFLOW_EXPERIMENT_NAME`` (else ``strace_ds``), at ``MLFLOW_TRACKING_URI``; the config's
    fields as its parameters. Names MLflow refuses are rewritten by :func:`mlflow_name`."""

    def __init__(self, run_name: str, params: dict[str, Any]) -> None:
        import os

        import mlflow

        self.client = mlflow.MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name)
        )
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        from mlflow.entities import Param

        items = [Param(k, str(v)[:500]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def scalars(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_name(k), float(v), now, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_trackers(
    report_to: str, log_dir: Path, run_name: str, params: dict[str, Any]
) -> list[Any]:
    """The trackers ``report_to`` names other than TensorBoard (which :class:`Monitor` keeps)."""
    out: list[Any] = []
    for name in parse_trackers(report_to):
        if name == "wandb":
            out.append(WandbTracker(log_dir, run_name, params))
        elif name == "mlflow":
            out.append(MlflowTracker(run_name, params))
    return out
