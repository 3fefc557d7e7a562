"""TensorBoard logging, the run's ``metrics.jsonl`` and the per-token credit picture.

Every scalar is namespaced; the full list with one line each is in docs/TRAINING.md ("Metrics").
Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch


class Monitor:
    """A thin wrapper over ``SummaryWriter`` that skips NaN scalars and non-zero ranks.

    The writer (and its event file) is opened on first use, so that a resumed run can first
    call :meth:`resume_after`. ``report_to`` (``--report_to``) names the trackers: TensorBoard
    gets everything, W&B and MLflow (:mod:`strace_ds.train.trackers`) the same scalars under
    the same names; ``run_name`` and ``params`` (the config) name and describe their runs.
    """

    def __init__(
        self, log_dir: str | Path, enabled: bool = True, report_to: str = "tensorboard",
        run_name: str | None = None, params: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        from strace_ds.train.trackers import parse_trackers

        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self.report_to = report_to
        self.tensorboard = "tensorboard" in parse_trackers(report_to)
        self.run_name = run_name or self.log_dir.name
        self.params = params or {}
        self._writer: Any = None
        self._trackers: list[Any] | None = None
        self.purge_step: int | None = None

    @property
    def trackers(self) -> list[Any]:
        """The W&B and MLflow trackers named by ``report_to``, opened on first use."""
        if self._trackers is None:
            from strace_ds.train.trackers import open_trackers

            self._trackers = (
                open_trackers(self.report_to, self.log_dir, self.run_name, self.params)
                if self.enabled
                else []
            )
        return self._trackers

    @property
    def writer(self) -> Any:
        if self._writer is None and self.enabled and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self.purge_step)
        return self._writer

    def resume_after(self, step: int) -> None:
        """The run continues after ``step`` (a resume): TensorBoard drops whatever an earlier
        run logged at later steps (``SummaryWriter(purge_step=step + 1)``), so each re-run step
        appears once, with its new values."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.purge_step = step + 1

    def scalars(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        kept = {
            key: value
            for key, value in values.items()
            if value is not None and not (isinstance(value, float) and math.isnan(value))
        }
        if self.writer:
            for key, value in kept.items():
                self.writer.add_scalar(key, value, step)
        for tracker in self.trackers:
            tracker.scalars(kept, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if self.writer and values.numel():
            self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer:
            self.writer.add_text(tag, text, step)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        if self.writer:
            self.writer.add_figure(tag, figure, step, close=True)

    def flush(self) -> None:
        if self._writer:
            self._writer.flush()

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        for tracker in self._trackers or []:
            tracker.close()
        self._trackers = None


METRICS_FILE = "metrics.jsonl"
"""One JSON object per line in ``<output_dir>/<run_name>/``: what a test, a benchmark or a user
reads instead of a checkpoint's internals."""


class MetricsLog:
    """The run's history as JSON lines: ``{"step": n, ...}`` per training step and ``{"eval_step":
    n, ...}`` per evaluation, in the order they happened (the checkpoint's ``history``, with the
    step number on each training line).

    A resumed run first rewrites the file from the checkpoint's history (:meth:`reset`), so the
    steps it re-runs appear once and an interrupted-then-resumed run leaves the same file as an
    uninterrupted one. Lines are appended and flushed as they happen; a line cut short by a
    crash is ignored by :func:`read_history`.
    """

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    @staticmethod
    def line(entry: dict[str, float], step: int | None = None) -> str:
        row = entry if step is None or "eval_step" in entry else {"step": step, **entry}
        return json.dumps(row, allow_nan=True) + "\n"

    def reset(self, history: list[dict[str, float]]) -> None:
        """Replace the file with ``history`` (training entries numbered 1, 2, ... in order)."""
        if not self.enabled:
            return
        from strace_ds.publish import atomic_write_text

        step, lines = 0, []
        for entry in history:
            if "eval_step" not in entry:
                step += 1
            lines.append(self.line(entry, step))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(lines))

    def append(self, entry: dict[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(self.line(entry, step))


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """The lines of ``<run_dir>/metrics.jsonl``: training steps (``"step"``) and evaluations
    (``"eval_step"``), in order. A last line cut short by a crash is skipped."""
    path = Path(run_dir) / METRICS_FILE
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, text in enumerate(lines, 1):
        try:
            rows.append(json.loads(text))
        except json.JSONDecodeError:
            if number < len(lines):  # only the last line can be cut short (one append each)
                raise ValueError(f"{path}: line {number} is not JSON: {text[:80]!r}") from None
    return rows


def credit_figure(tokens: list[str], credit: list[float], title: str) -> Any:
    """One answer's tokens on a colour scale of the credit (gradient weight) each received.

    Red cells were pushed down, blue cells pushed up; white got nothing (e.g. tokens S-trace
    did not select). The scale is symmetric around 0.
    """
    import matplotlib
    from matplotlib import cm, colors
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    per_line = 16
    n_lines = max(1, math.ceil(len(tokens) / per_line))
    # A bare Figure: no pyplot state, so a notebook's inline backend is left alone.
    fig = Figure(figsize=(12, 0.55 * n_lines + 1.0))
    ax = fig.subplots()
    bound = max((abs(c) for c in credit), default=1.0) or 1.0
    norm = colors.Normalize(vmin=-bound, vmax=bound)
    cmap = matplotlib.colormaps["RdBu"]
    for k, (tok, c) in enumerate(zip(tokens, credit)):
        row, col = divmod(k, per_line)
        ax.add_patch(Rectangle((col, -row - 1), 1, 1, color=cmap(norm(c))))
        label = tok.replace("\n", "\\n")[:8]
        ax.text(col + 0.5, -row - 0.5, label, ha="center", va="center", fontsize=7)
    ax.set_xlim(0, per_line)
    ax.set_ylim(-n_lines, 0)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.colorbar(
        cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.02, label="credit = -dL/dlogp"
    )
    return fig
