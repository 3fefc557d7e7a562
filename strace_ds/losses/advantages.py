"""Group-relative advantages for RLVR: one scalar per sampled answer, no critic.

A batch of ``N = P * G`` rewards holds ``P`` prompts with ``G`` answers each, grouped
contiguously: rows ``i*G .. i*G + G - 1`` answer prompt ``i``. Every method compares an
answer's reward ``R_j`` only with the rewards of its own group ``g``:

* ``grpo``    ``A_j = (R_j - mean_g R) / (std_g R + eps)``, ``std`` unbiased (``G - 1``);
* ``dr_grpo`` ``A_j = R_j - mean_g R`` (Dr. GRPO drops the std division, which up-weights
  groups that are nearly all right or nearly all wrong);
* ``rloo``    ``A_j = R_j - mean_{k != j} R_k`` (REINFORCE leave-one-out baseline).

A group whose rewards are all equal carries no learning signal: every method gives it
``A = 0`` exactly (not ``1e-17`` rounding noise) and reports it in
:attr:`GroupAdvantages.zero_variance_mask`. :func:`filter_zero_variance_groups` drops such
groups altogether, as DAPO's dynamic sampling does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ADVANTAGE_METHODS",
    "GroupAdvantages",
    "filter_zero_variance_groups",
    "group_advantages",
]


@dataclass(frozen=True)
class GroupAdvantages:
    """Advantages of one batch of grouped rewards and an account of the silent groups."""

    advantages: Tensor
    """``[N]`` one advantage per answer, same dtype as the (floating) rewards."""
    zero_variance_mask: Tensor
    """``[N / G]`` bool, True where every reward of the group is equal (its ``A`` is 0)."""
    zero_variance_frac: float
    """Fraction of groups with zero reward variance, in ``[0, 1]``."""


def _grpo(grouped: Tensor, eps: float) -> Tensor:
    """``A = (R - mean_g R) / (std_g R + eps)`` with the unbiased std; ``grouped`` is ``[P, G]``."""
    mean = grouped.mean(dim=1, keepdim=True)  # [P, 1]
    std = grouped.std(dim=1, keepdim=True, unbiased=True)  # [P, 1]
    return (grouped - mean) / (std + eps)


def _dr_grpo(grouped: Tensor, eps: float) -> Tensor:
    """``A = R - mean_g R`` (``eps`` unused); ``grouped`` is ``[P, G]``."""
    del eps
    return grouped - grouped.mean(dim=1, keepdim=True)


def _rloo(grouped: Tensor, eps: float) -> Tensor:
    """Leave-one-out baseline ``A_j = R_j - (sum_g R - R_j) / (G - 1)``; ``grouped`` is ``[P, G]``.

    Expanding the baseline, ``R_j - (G mean - R_j) / (G - 1) = G / (G - 1) * (R_j - mean)``:
    RLOO is the Dr. GRPO advantage scaled by ``G / (G - 1)``. The leave-one-out form is
    computed directly (``eps`` unused).
    """
    del eps
    G = grouped.shape[1]
    total = grouped.sum(dim=1, keepdim=True)  # [P, 1]
    return grouped - (total - grouped) / (G - 1)


ADVANTAGE_METHODS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "grpo": _grpo,
    "dr_grpo": _dr_grpo,
    "rloo": _rloo,
}
"""Advantage methods by name; each maps grouped rewards ``[P, G]`` and ``eps`` to ``[P, G]``."""

# The smallest group each method is defined for: the unbiased std and the leave-one-out
# mean both divide by G - 1.
_MIN_GROUP_SIZE = {"grpo": 2, "dr_grpo": 1, "rloo": 2}


def _grouped_rewards(rewards: Tensor, group_size: int, min_group_size: int = 1) -> Tensor:
    """Validate ``rewards [N]`` and reshape them to ``[N / G, G]`` (floating point)."""
    if not isinstance(rewards, Tensor) or rewards.dim() != 1:
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a 1-D tensor [N], got {shape}")
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise ValueError(f"group_size must be an int, got {group_size!r}")
    if group_size < min_group_size:
        raise ValueError(f"group_size must be >= {min_group_size} here, got {group_size}")
    N = rewards.shape[0]
    if N == 0 or N % group_size != 0:
        raise ValueError(
            f"the number of rewards ({N}) must be a positive multiple of group_size "
            f"({group_size}): rows i*G .. i*G+G-1 must hold the answers to prompt i"
        )
    if rewards.dtype == torch.bool or not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards must be finite (found NaN or inf)")
    return rewards.reshape(N // group_size, group_size)  # [P, G]


def _zero_variance_groups(grouped: Tensor) -> Tensor:
    """``[P]`` bool: True where all ``G`` rewards of the group are exactly equal."""
    return (grouped == grouped[:, :1]).all(dim=1)


def group_advantages(
    rewards: Tensor, group_size: int, method: str = "grpo", eps: float = 1e-6
) -> GroupAdvantages:
    """Group-relative advantages of contiguous groups of ``group_size`` answers.

    Args:
        rewards: ``[N]`` one scalar reward per answer, ``N = P * G``; rows ``i*G..i*G+G-1``
            share prompt ``i``. Integer or bool rewards are cast to the default float dtype.
        group_size: ``G``, answers per prompt (>= 2 for ``grpo`` and ``rloo``).
        method: a key of :data:`ADVANTAGE_METHODS` (see the module docstring for formulas).
        eps: added to the group std by ``grpo`` (``A = (R - mean) / (std + eps)``).

    Returns:
        :class:`GroupAdvantages` with ``advantages [N]`` (exactly 0 in groups whose rewards
        are all equal), ``zero_variance_mask [P]`` and ``zero_variance_frac``.
    """
    if method not in ADVANTAGE_METHODS:
        raise ValueError(
            f"unknown advantage method {method!r}; valid methods: {sorted(ADVANTAGE_METHODS)}"
        )
    if not (isinstance(eps, (int, float)) and eps >= 0 and eps == eps and eps != float("inf")):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    grouped = _grouped_rewards(rewards, group_size, _MIN_GROUP_SIZE[method])  # [P, G]
    zero_var = _zero_variance_groups(grouped)  # [P]
    adv = ADVANTAGE_METHODS[method](grouped, float(eps))  # [P, G]
    # Equal rewards already give 0 up to rounding of the mean; make it exact.
    adv = torch.where(zero_var[:, None], torch.zeros_like(adv), adv)
    return GroupAdvantages(
        advantages=adv.reshape(-1),
        zero_variance_mask=zero_var,
        zero_variance_frac=int(zero_var.sum().item()) / zero_var.numel(),
    )


def filter_zero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Row indices of the groups whose rewards are not all equal (DAPO dynamic sampling).

    Whole groups are kept or dropped, so ``batch[keep]`` is again grouped contiguously with
    the same ``group_size``.

    Args:
        rewards: ``[N]`` rewards grouped as in :func:`group_advantages`.
        group_size: ``G``, answers per prompt.

    Returns:
        ``[K]`` int64 row indices in increasing order, ``K = G * (number of kept groups)``;
        empty when every group has zero variance.
    """
    grouped = _grouped_rewards(rewards, group_size)  # [P, G]
    keep_groups = ~_zero_variance_groups(grouped)  # [P]
    rows = torch.arange(rewards.shape[0], device=rewards.device)  # [N]
    return rows.reshape_as(grouped)[keep_groups].reshape(-1)
