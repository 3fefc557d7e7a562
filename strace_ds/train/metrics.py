"""A training step's scalar metrics: each rank's partial statistics and their reduction.

:func:`local_step_stats` turns one rank's experience and update into plain sums, counts,
maxima and lists; :func:`reduce_step_metrics` is a pure function of every rank's stats (in
rank order) that returns the logged scalars, so it is tested without any process group. The
trainer moves the stats between ranks with one ``all_gather_object``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["MISMATCH_THRESHOLD", "local_step_stats", "reduce_step_metrics", "timed"]

MISMATCH_THRESHOLD = 0.1
"""|rollout log-prob - trainer log-prob| above which a token counts as mismatched."""

_PER_TOKEN = ("rollout/logprob_diff_mean", "rollout/logprob_diff_frac")
_TOTALS = ("reward/timeouts", "reward/errors")


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """``with timed(timings, "perf/train_s"):`` stores the block's wall-clock seconds under
    ``key`` (also when the block raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = time.perf_counter() - start


def local_step_stats(
    exp: Any, old_logprobs: torch.Tensor, loss_metrics: dict[str, list[float]]
) -> dict[str, Any]:
    """One rank's share: sums over its rows and tokens, its maxima, the update's metric lists.

    ``exp`` is the rank's :class:`~strace_ds.train.experience.Experience`, ``old_logprobs`` the
    proximal log-probs the update used, ``loss_metrics`` what the updater collected.
    """
    mask = exp.batch.response_mask
    diff = (exp.batch.rollout_logprobs - old_logprobs).abs()[mask]
    sums = {
        "reward/mean": float(exp.rewards.sum()),
        "reward/accuracy": float(exp.correct.sum()),
        "reward/timeouts": float(exp.num_timeouts),
        "reward/errors": float(exp.num_errors),
        "advantage/zero_variance_frac": exp.zero_variance_frac * len(exp.rewards),
        "response/length_mean": float(exp.lengths.sum()),
        "response/truncated_frac": float(sum(exp.truncated)),
        "rollout/logprob_diff_mean": float(diff.sum()),
        "rollout/logprob_diff_frac": float((diff > MISMATCH_THRESHOLD).sum()),
    }
    for label, values in exp.components.items():  # each --reward, unweighted
        sums[f"reward/{label}"] = float(values.sum())
    return {
        "sums": sums,
        "rows": float(len(exp.rewards)),
        "tokens": float(mask.sum()),
        "length_max": float(exp.lengths.max()) if len(exp.lengths) else 0.0,
        "diff_max": float(diff.max()) if diff.numel() else 0.0,
        "loss_metrics": {k: list(v) for k, v in loss_metrics.items()},
        "draws": float(exp.draws),
    }


def reduce_step_metrics(
    per_rank: list[dict[str, Any]], updates: int, timings: dict[str, float], epochs: int = 1
) -> dict[str, float]:
    """The step's scalars from every rank's :func:`local_step_stats`.

    Row means (rewards, lengths, shares) divide by all ranks' rows, token means by all ranks'
    answer tokens; ``reward/timeouts``/``errors`` are totals; ``*_max``/``*_min`` loss metrics
    take the extreme, ``policy/loss`` sums the ranks' shares and averages over the step's
    ``updates`` (mini-batches x epochs), other loss metrics average their finite values.
    ``timings`` (``perf/*`` seconds, including ``perf/rollout_s`` and ``perf/train_s``) are
    copied and give the throughputs (training: answer tokens x ``epochs`` per second).
    """
    rows = sum(r["rows"] for r in per_rank)
    tokens = sum(r["tokens"] for r in per_rank)
    metrics: dict[str, float] = {}
    for k in per_rank[0]["sums"]:
        total = sum(r["sums"][k] for r in per_rank)
        if k in _TOTALS:
            metrics[k] = total
        else:
            metrics[k] = total / max(tokens if k in _PER_TOKEN else rows, 1.0)
    metrics["response/length_max"] = max(r["length_max"] for r in per_rank)
    metrics["rollout/logprob_diff_max"] = max(r["diff_max"] for r in per_rank)
    for k in per_rank[0]["loss_metrics"]:
        finite = [v for r in per_rank for v in r["loss_metrics"].get(k, []) if not math.isnan(v)]
        if not finite:
            metrics[k] = math.nan
        elif k.endswith("_max"):
            metrics[k] = max(finite)
        elif k.endswith("_min"):
            metrics[k] = min(finite)
        elif k == "policy/loss":
            metrics[k] = sum(finite) / updates
        else:
            metrics[k] = sum(finite) / len(finite)
    draws = [r.get("draws", 1.0) for r in per_rank]  # generate calls (DAPO re-sampling)
    metrics["rollout/draws_mean"] = sum(draws) / len(draws)
    metrics["rollout/draws_max"] = max(draws)
    if "staleness" in per_rank[0]:  # policy versions between the answers and the update
        stale = [r["staleness"] for r in per_rank]
        metrics["rollout/staleness_mean"] = sum(stale) / len(stale)
        metrics["rollout/staleness_max"] = max(stale)
    gen_tokens = sum(r["sums"]["response/length_mean"] for r in per_rank)
    metrics.update(timings)
    metrics["perf/rollout_tokens_per_s"] = gen_tokens / max(timings["perf/rollout_s"], 1e-9)
    metrics["perf/train_tokens_per_s"] = tokens * epochs / max(timings["perf/train_s"], 1e-9)
    return metrics
