"""What a training step writes to TensorBoard besides its scalars: histograms, sample answers
and the per-token credit picture (rank 0 only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from strace_ds.losses import token_credit
from strace_ds.train.monitor import Monitor, credit_figure

if TYPE_CHECKING:
    from strace_ds.config import ObjectiveConfig, RunConfig
    from strace_ds.train.experience import Experience

__all__ = ["log_step"]


def log_step(
    monitor: Monitor,
    run: RunConfig,
    objective: ObjectiveConfig,
    max_new_tokens: int,
    tokenizer: Any,
    step: int,
    metrics: dict[str, float],
    exp: Experience,
    last: dict[str, Any],
) -> None:
    """Scalars, histograms, every ``run.sample_every`` steps four answers, every
    ``run.image_every`` steps one answer's credit under ``objective``'s loss (``max_new_tokens``
    is its normaliser's answer cap). ``last`` is the updater's last micro-batch."""
    cfg = run
    monitor.scalars(metrics, step)
    monitor.histogram("hist/advantages", exp.advantages, step)
    if last:
        monitor.histogram("hist/entropy", last["entropy"][last["mask"]], step)
        monitor.histogram("hist/trace_ratio", last["ratio"][last["loss_mask"]], step)
    if cfg.sample_every and step % cfg.sample_every == 0:
        lines = [
            f"**reward {float(exp.rewards[i]):.2f}** (gold {exp.golds[i]}): {exp.texts[i]}"
            for i in range(min(4, len(exp.texts)))
        ]
        monitor.text("samples", "\n\n".join(lines), step)
    if cfg.image_every and step % cfg.image_every == 0 and last:
        _log_credit(monitor, objective, max_new_tokens, tokenizer, step, exp, last)


def _log_credit(
    monitor: Monitor, objective: ObjectiveConfig, max_new_tokens: int, tokenizer: Any, step: int,
    exp: Experience, last: dict[str, Any],
) -> None:  # fmt: skip
    """Picture of one answer's per-token credit under the step's selection (the one the
    update used), computed on its micro-batch."""
    rows = last["rows"]
    width = last["logp"].shape[1]  # the micro-batch's answer columns (padding trimmed)
    adv = exp.advantages[rows]
    candidates = torch.nonzero(adv != 0).flatten()  # an answer that received credit
    credit = token_credit(
        last["logp"].double(),
        exp.old_logprobs[rows][:, :width].double(),
        adv.double(),
        last["mask"],
        entropy=last["entropy"].double(),
        config=objective.trace_config(),
        max_len=max_new_tokens,
        selected=None if exp.selected is None else exp.selected[rows][:, :width],
    )
    i = int(candidates[0]) if len(candidates) else 0  # else all-zero credit, still shown
    n = int(last["mask"][i].sum())
    ids = exp.batch.response_ids[rows][i, :n].tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    title = (
        f"step {step}: credit per token ({objective.loss}), A = {float(adv[i]):+.2f}, "
        f"reward {float(exp.rewards[rows][i]):.2f}"
    )
    monitor.figure("credit/tokens", credit_figure(tokens, credit[i, :n].tolist(), title), step)
