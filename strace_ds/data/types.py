"""Containers shared by every prompt source (synthetic task, local files, the hub)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PromptExample:
    """One question with its verifiable gold answer."""

    prompt: str
    """The question as shown to the model (before the chat template)."""
    answer: str
    """Gold answer graded by math-verify (e.g. ``"42"`` or ``"\\frac{1}{2}"``)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (id, level, a reference solution...)."""


@dataclass
class PromptDataset:
    """A list of usable examples plus an account of what was dropped while loading."""

    examples: list[PromptExample]
    source: str
    """Where the rows came from (hub id, file path, or ``synthetic:<split>``)."""
    skipped: int = 0
    """Rows dropped because the prompt or the answer was missing or empty."""

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> PromptExample:
        return self.examples[i]
