"""Overlong-response handling from DAPO (Yu et al., 2025, arXiv:2503.14476, Sec. 3.4).

A response cut off at ``max_new_tokens`` never got to state its answer, so its 0 reward says
"too long", not "wrong". DAPO offers two remedies, selected here by name:

* ``"mask"`` (Overlong Filtering): truncated samples are excluded from the loss.
* ``"soft"`` (Soft Overlong Punishment): a length penalty that ramps from 0 to -1 over the
  last ``buffer`` tokens before the limit is added to the reward.
* ``"none"``: rewards untouched, every sample kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

OVERLONG_MODES = ("none", "mask", "soft")


def overlong_penalty(
    lengths: Tensor, max_new_tokens: int, buffer: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """DAPO soft overlong punishment (arXiv:2503.14476, Eq. 13), per response.

    With ``L_max = max_new_tokens``, ``L_cache = buffer`` and ``|y|`` the response length::

        R_length(y) = 0                              if |y| <= L_max - L_cache
                    = ((L_max - L_cache) - |y|) / L_cache
                                                     if L_max - L_cache < |y| <= L_max
                    = -1                             if |y| > L_max

    The middle branch falls linearly from 0 (just past ``L_max - L_cache``) to -1 at ``L_max``.

    Args:
        lengths: ``[N]`` generated token counts (any integer or float dtype).
        max_new_tokens: ``L_max``, the generation limit.
        buffer: ``L_cache``, the width of the ramp, ``1 <= buffer <= max_new_tokens``.
        dtype: floating dtype of the result.

    Returns:
        ``[N]`` penalties in ``[-1, 0]``.
    """
    if lengths.dim() != 1:
        raise ValueError(
            f"overlong_penalty: lengths must be 1-D [N], got shape {list(lengths.shape)}"
        )
    if max_new_tokens < 1:
        raise ValueError(f"overlong_penalty: max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 1 <= buffer <= max_new_tokens:
        raise ValueError(
            f"overlong_penalty: buffer must be in [1, max_new_tokens={max_new_tokens}], "
            f"got {buffer}; set overlong buffer to a fraction of max_new_tokens (DAPO: 4096/20480)"
        )
    length = lengths.to(dtype)  # [N]
    start = float(max_new_tokens - buffer)
    ramp = (start - length) / buffer  # [N], <= 0 on the ramp
    penalty = torch.where(length <= start, torch.zeros_like(length), ramp)
    return torch.where(length > max_new_tokens, torch.full_like(length, -1.0), penalty)


def _is_seq(x: object) -> bool:
    return isinstance(x, (list, tuple))


def apply_overlong(
    rewards: Tensor | list[float],
    lengths: Tensor | list[int],
    truncated: Tensor | list[bool],
    max_new_tokens: int,
    mode: str,
    buffer: int,
) -> tuple[Tensor, Tensor]:
    """Apply the overlong ``mode`` (one of ``OVERLONG_MODES``) to a batch of rewards.

    * ``"none"``: ``(rewards, all True)``.
    * ``"mask"``: ``(rewards, ~truncated)``: truncated samples are dropped from the loss
      (DAPO Overlong Filtering). Their rewards are left as they are, so group statistics that
      read them still see the 0.
    * ``"soft"``: ``(rewards + overlong_penalty(lengths, max_new_tokens, buffer), all True)``.

    Args:
        rewards: ``[N]`` float task rewards.
        lengths: ``[N]`` generated token counts.
        truncated: ``[N]`` bool, True where generation stopped at the length limit.
            Any of the three may also be a plain list.
        max_new_tokens: the generation limit ``L_max``.
        mode: ``"none"``, ``"mask"`` or ``"soft"``.
        buffer: the soft ramp width ``L_cache`` (used by ``"soft"`` only).

    Returns:
        ``(rewards [N] float, keep_mask [N] bool)``; inputs are not modified.
    """
    if mode not in OVERLONG_MODES:
        raise ValueError(
            f"apply_overlong: unknown mode {mode!r}; choose one of {', '.join(OVERLONG_MODES)}"
        )
    # Plain lists are accepted too (e.g. truncated built from finish reasons).
    rewards = torch.as_tensor(rewards, dtype=torch.float32) if _is_seq(rewards) else rewards
    lengths = torch.as_tensor(lengths) if _is_seq(lengths) else lengths
    truncated = torch.as_tensor(truncated, dtype=torch.bool) if _is_seq(truncated) else truncated
    n = rewards.shape[0] if rewards.dim() == 1 else -1
    if rewards.dim() != 1 or lengths.shape != (n,) or truncated.shape != (n,):
        raise ValueError(
            "apply_overlong: rewards, lengths and truncated must all be 1-D of the same length "
            f"[N], got {list(rewards.shape)}, {list(lengths.shape)}, {list(truncated.shape)}"
        )
    if truncated.dtype != torch.bool:
        raise ValueError(f"apply_overlong: truncated must be a bool tensor, got {truncated.dtype}")
    keep = torch.ones_like(truncated)  # [N] bool
    if mode == "mask":
        return rewards.clone(), ~truncated
    if mode == "soft":
        penalty = overlong_penalty(lengths, max_new_tokens, buffer, dtype=rewards.dtype)
        return rewards + penalty, keep
    return rewards.clone(), keep
