"""The learning-rate schedule: a warm-up whose first update already moves, then a decay.

One pure function, :func:`lr_multiplier`, defines the schedule; the trainer hands DeepSpeed a
``torch.optim.lr_scheduler.LambdaLR`` built on it (:func:`scheduler_factory`), so the
DeepSpeed config carries no ``"scheduler"`` section (one source of truth: ``TrainConfig``).
DeepSpeed steps it once per optimizer update and saves its state in every checkpoint.

With ``W = warmup_steps`` and ``T = total_updates`` (``steps x mini_batches x epochs``),
update ``u`` (0-based) uses ``lr x lr_multiplier(u)``:

* warm-up, ``u < W``: ``(u + 1) / (W + 1)`` (``1/(W+1)``, ..., ``W/(W+1)``; DeepSpeed's
  ``WarmupLR`` from ``warmup_min_lr = 0`` spent its first two updates at lr 0);
* then, with ``p = (u - W) / (T - W)`` (0 at the first update after warm-up, reaching 1 one
  update after the last, so the last update still moves) and ``r = min_lr_ratio``:
  ``constant`` 1, ``linear`` ``r + (1 - r) (1 - p)``, ``cosine``
  ``r + (1 - r) (1 + cos(pi p)) / 2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_multiplier(
    update: int,
    *,
    warmup_steps: int,
    total_updates: int,
    schedule: str = "constant",
    min_lr_ratio: float = 0.0,
) -> float:
    """Learning rate of optimizer update ``update`` (0-based), as a fraction of the peak lr."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {schedule!r}")
    if update < warmup_steps:
        return (update + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    p = min(max((update - warmup_steps) / max(total_updates - warmup_steps, 1), 0.0), 1.0)
    shape = 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def lr_at(update: int, *, lr: float, **schedule: Any) -> float:
    """The learning rate of update ``update``: ``lr x lr_multiplier(update, **schedule)``."""
    return lr * lr_multiplier(update, **schedule)


def scheduler_factory(**schedule: Any) -> Callable[[Any], Any]:
    """``deepspeed.initialize(lr_scheduler=...)``: the optimizer -> a ``LambdaLR`` on it.

    ``schedule`` holds :func:`lr_multiplier`'s keywords. DeepSpeed builds its own optimizer
    from the config, so it gets a callable and applies it to that optimizer; the optimizer's
    lr (the peak, ``--lr``) is the LambdaLR's base. The multiplier is a plain closure, so
    a checkpoint stores the scheduler's position (``last_epoch``), not the schedule itself:
    a resumed run follows its own config's schedule from the saved update.
    """
    lr_multiplier(0, **schedule)  # a bad schedule fails here, not at the first update

    def build(optimizer: Any) -> Any:
        from torch.optim.lr_scheduler import LambdaLR

        def multiplier(update: int) -> float:
            return lr_multiplier(update, **schedule)

        return LambdaLR(optimizer, multiplier)

    return build


def describe(lr: float, **schedule: Any) -> str:
    """One line for the run log: the warm-up, the decay and the first update's lr."""
    w, t = schedule["warmup_steps"], schedule["total_updates"]
    kind = schedule.get("schedule", "constant")
    text = f"lr: peak {lr:g}"
    if w:
        first = lr_at(0, lr=lr, **schedule)
        text += f", linear warm-up over {w} update(s) (first update {first:g})"
    if kind == "constant":
        text += ", then constant"
    else:
        final = lr * schedule.get("min_lr_ratio", 0.0)
        text += f", then {kind} decay towards {final:g} over {t} updates in all"
    return text


__all__ = ["LR_SCHEDULES", "describe", "lr_at", "lr_multiplier", "scheduler_factory"]
