"""Dropout off for RL (as verl and TRL do).

The old (proximal) log-probs are scored in eval mode and the updates run in train mode; with
dropout on, the two passes see different networks and every update is off-policy from its
first token (mean |log-prob delta| 0.38 measured with dropout 0.1).
:func:`disable_dropout` sets every dropout probability of a Hugging Face config to 0 before
the model is built; :func:`disable_dropout_modules` catches ``nn.Dropout`` layers whose
rate does not come from the config.
"""

from __future__ import annotations

import re
from typing import Any

_DROPOUT_NAME = re.compile(r"dropout|pdrop|layerdrop|drop_path", re.IGNORECASE)
"""Config keys holding a dropout probability: ``attention_dropout``, ``hidden_dropout_prob``,
``resid_pdrop``, ``embd_pdrop``, ``classifier_dropout``, ``layerdrop``, ``drop_path_rate``..."""


def disable_dropout(config: Any) -> dict[str, float]:
    """Set every dropout probability of ``config`` (and its sub-configs) to ``0.0``, in place.

    A dropout probability is a number in [0, 1] (not a bool, not None) whose key matches
    :data:`_DROPOUT_NAME`. Returns ``{dotted key: old value}`` of those that were non-zero.
    """
    changed: dict[str, float] = {}
    _walk(config, "", changed, set())
    return changed


def _walk(config: Any, prefix: str, changed: dict[str, float], seen: set[int]) -> None:
    if id(config) in seen:
        return
    seen.add(id(config))
    for key, value in list(vars(config).items()):
        if key.startswith("_"):
            continue
        if hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a sub-config
            _walk(value, f"{prefix}{key}.", changed, seen)
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and 0 <= value <= 1
            and _DROPOUT_NAME.search(key)
        ):
            if value:
                changed[prefix + key] = float(value)
            setattr(config, key, 0.0)


def disable_dropout_modules(model: Any) -> dict[str, float]:
    """Set ``p = 0`` on every ``torch.nn`` dropout layer of ``model``; ``{name: old p}``."""
    import torch

    changed: dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p:
            changed[name] = float(module.p)
            module.p = 0.0
    return changed


def describe(changed: dict[str, float], modules: dict[str, float] | None = None) -> str | None:
    """The run-log line for what was turned off; None when nothing was non-zero."""
    parts = [f"{key} {value:g}" for key, value in changed.items()]
    if modules:
        parts.append(f"{len(modules)} nn.Dropout layer(s) p={max(modules.values()):g}")
    if not parts:
        return None
    return (
        f"dropout: disabled for RL ({', '.join(parts)} -> 0): old log-probs are scored in eval "
        "mode and updates run in train mode, so dropout would make every update off-policy"
    )


__all__ = ["describe", "disable_dropout", "disable_dropout_modules"]
