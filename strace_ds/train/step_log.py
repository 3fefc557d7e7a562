"""What a training step writes to TensorBoard besides its scalars: histograms, sample answers
and the per-token credit picture (rank 0 only)."""

from __future__ import annotations

from typing import Any

import torch

from strace_ds.losses import token_credit
from strace_ds.train.monitor import Monitor, credit_figure

__all__ = ["log_step"]


def log_step(
    monitor: Monitor,
    cfg: Any,
    trace_cfg: Any,
    tokenizer: Any,
    step: int,
    metrics: dict[str, float],
    sb: Any,
    last: dict[str, Any],
) -> None:
    """Scalars, histograms, every ``sample_every`` steps four answers, every ``image_every``
    steps one answer's credit. ``last`` is the updater's last micro-batch."""
    monitor.scalars(metrics, step)
    monitor.histogram("hist/advantages", sb.advantages, step)
    if last:
        monitor.histogram("hist/entropy", last["entropy"][last["mask"]], step)
        monitor.histogram("hist/trace_ratio", last["ratio"][last["loss_mask"]], step)
    if cfg.sample_every and step % cfg.sample_every == 0:
        lines = [
            f"**reward {float(sb.rewards[i]):.2f}** (gold {sb.golds[i]}): {sb.texts[i]}"
            for i in range(min(4, len(sb.texts)))
        ]
        monitor.text("samples", "\n\n".join(lines), step)
    if cfg.image_every and step % cfg.image_every == 0 and last:
        _log_credit(monitor, cfg, trace_cfg, tokenizer, step, sb, last)


def _log_credit(
    monitor: Monitor, cfg: Any, trace_cfg: Any, tokenizer: Any, step: int, sb: Any,
    last: dict[str, Any],
) -> None:  # fmt: skip
    """Picture of one answer's per-token credit under the step's selection (the one the
    update used), computed on its micro-batch."""
    rows = last["rows"]
    width = last["logp"].shape[1]  # the micro-batch's answer columns (padding trimmed)
    adv = sb.advantages[rows]
    candidates = torch.nonzero(adv != 0).flatten()  # an answer that received credit
    credit = token_credit(
        last["logp"].double(),
        sb.old_logprobs[rows][:, :width].double(),
        adv.double(),
        last["mask"],
        entropy=last["entropy"].double(),
        config=trace_cfg,
        max_len=cfg.max_new_tokens,
        selected=None if sb.selected is None else sb.selected[rows][:, :width],
    )
    i = int(candidates[0]) if len(candidates) else 0  # else all-zero credit, still shown
    n = int(last["mask"][i].sum())
    ids = sb.batch.response_ids[rows][i, :n].tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    title = (
        f"step {step}: credit per token ({cfg.loss}), A = {float(adv[i]):+.2f}, "
        f"reward {float(sb.rewards[rows][i]):.2f}"
    )
    monitor.figure("credit/tokens", credit_figure(tokens, credit[i, :n].tolist(), title), step)
