"""Rollout engines behind one protocol, chosen by name.

:func:`build_rollout_engine` builds an engine from its own keyword arguments (evaluation,
notebooks); :func:`build_run_rollout` builds the one a training run configures
(``--rollout``), through the same registry of names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from strace_ds.rollout.base import FINISH_REASONS, Generation, RolloutEngine, SamplingParams


def _hf_for_run(rollouts: Any, run_dir: Path, model_path: str, tokenizer: Any, is_main: bool,
                device: str) -> Any:  # fmt: skip
    return build_rollout_engine(
        "hf", model=model_path, tokenizer=tokenizer, device=device,
        max_batch_size=rollouts.rollout_batch_size,
    )  # fmt: skip


def _sglang_for_run(rollouts: Any, run_dir: Path, model_path: str, tokenizer: Any, is_main: bool,
                    device: str) -> Any:  # fmt: skip
    from strace_ds.rollout.sglang.ranks import build_sglang_rollout

    return build_sglang_rollout(rollouts, run_dir / "sglang_weights", model_path, is_main=is_main)


RUN_BUILDERS: dict[str, Callable[..., Any]] = {"hf": _hf_for_run, "sglang": _sglang_for_run}
"""``--rollout`` name -> builder of that engine for a training run (one per rank):
``(rollouts section, run dir, model path, tokenizer, is_main, device) -> engine``."""

ROLLOUT_ENGINES = tuple(RUN_BUILDERS)


def build_run_rollout(
    rollouts: Any, run_dir: Path, model_path: str, tokenizer: Any, is_main: bool,
    device: str = "cpu",
) -> Any:  # fmt: skip
    """The rollout engine of a training run: ``rollouts.rollout`` (the run config's rollouts
    section) looked up in :data:`RUN_BUILDERS`."""
    if rollouts.rollout not in RUN_BUILDERS:
        raise ValueError(
            f"rollout: unknown engine {rollouts.rollout!r}; choose one of "
            f"{', '.join(ROLLOUT_ENGINES)}"
        )
    return RUN_BUILDERS[rollouts.rollout](rollouts, Path(run_dir), model_path, tokenizer, is_main,
                                          device)  # fmt: skip


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
    "RUN_BUILDERS",
    "SamplingParams",
    "build_rollout_engine",
    "build_run_rollout",
]
