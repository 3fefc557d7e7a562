"""Rewards: boxed-answer extraction, math-verify grading, named and user rewards (``--reward``)
graded in a timed worker pool, DAPO overlong.

``overlong`` needs torch; it is imported lazily so that grading workers (which import this
package) start without paying for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strace_ds.rewards.extract import extract_boxed_answer
from strace_ds.rewards.grading import grade_answer
from strace_ds.rewards.pool import RewardPool, RewardResult
from strace_ds.rewards.registry import (
    REWARDS,
    RewardTerm,
    load_reward,
    parse_reward_spec,
)

if TYPE_CHECKING:
    from strace_ds.rewards.overlong import OVERLONG_MODES, apply_overlong, overlong_penalty

_LAZY = {"OVERLONG_MODES", "apply_overlong", "overlong_penalty"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from strace_ds.rewards import overlong

        return getattr(overlong, name)
    raise AttributeError(f"module 'strace_ds.rewards' has no attribute {name!r}")


__all__ = [
    "OVERLONG_MODES",
    "REWARDS",
    "RewardPool",
    "RewardResult",
    "RewardTerm",
    "apply_overlong",
    "extract_boxed_answer",
    "grade_answer",
    "load_reward",
    "overlong_penalty",
    "parse_reward_spec",
]
