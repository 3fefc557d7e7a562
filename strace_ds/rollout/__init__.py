"""Rollout engines behind one protocol, chosen by name through :func:`build_rollout_engine`."""

from __future__ import annotations

from typing import Any

from strace_ds.rollout.base import FINISH_REASONS, Generation, RolloutEngine, SamplingParams

ROLLOUT_ENGINES = ("hf", "sglang")


def build_rollout_engine(kind: str, **kwargs: Any) -> RolloutEngine:
    """Build the engine named ``kind`` (one of ``ROLLOUT_ENGINES``) with its keyword arguments."""
    if kind == "hf":
        from strace_ds.rollout.hf import HFRolloutEngine

        return HFRolloutEngine(**kwargs)
    if kind == "sglang":
        from strace_ds.rollout.sglang import SGLangRolloutEngine

        return SGLangRolloutEngine(**kwargs)
    raise ValueError(
        f"rollout: unknown engine {kind!r}; choose one of {', '.join(ROLLOUT_ENGINES)}"
    )


__all__ = [
    "FINISH_REASONS",
    "Generation",
    "ROLLOUT_ENGINES",
    "RolloutEngine",
    "SamplingParams",
    "build_rollout_engine",
]
