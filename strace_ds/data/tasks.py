"""The generated tasks by name: ``--dataset synthetic`` and ``--dataset chain[:key=value,...]``.

One registry, read by the trainer's data builders, the evaluation benchmarks and the credit
study: a task name (the part of the spec before ``:``) maps to a function
``(spec, split, size, seed) -> PromptDataset`` and to the tiny policy warm-started on it, which
``--model`` defaults to. Every generated prompt carries its own instruction (``\\boxed{}``), so
no other is appended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from strace_ds.data.types import PromptDataset


@dataclass(frozen=True)
class GeneratedTask:
    """A generated task: how to draw its problems and which shipped policy knows it."""

    dataset: Callable[[str, str, int, int], PromptDataset]
    """``(spec, split, size, seed)`` -> problems; ``spec`` is the full ``--dataset`` value."""
    policy_dir: Callable[[str], Path]
    """``spec`` -> the shipped tiny policy warm-started on this task (shape)."""


def _arithmetic(spec: str, split: str, size: int, seed: int) -> PromptDataset:
    from strace_ds.data.arithmetic import arithmetic_dataset

    if spec != "synthetic":
        raise ValueError(f"dataset {spec!r}: the synthetic task takes no options")
    return arithmetic_dataset(split, size=size, seed=seed)


def _chain(spec: str, split: str, size: int, seed: int) -> PromptDataset:
    from strace_ds.data.chain import chain_dataset, parse_chain_spec

    return chain_dataset(split, size=size, seed=seed, config=parse_chain_spec(spec))


def _default_policy(spec: str) -> Path:
    from strace_ds.assets import default_policy_dir

    return default_policy_dir()


def _chain_policy(spec: str) -> Path:
    from strace_ds.assets import chain_policy_dir

    return chain_policy_dir(spec)


GENERATED_TASKS: dict[str, GeneratedTask] = {
    "synthetic": GeneratedTask(_arithmetic, _default_policy),
    "chain": GeneratedTask(_chain, _chain_policy),
}


def generated_task(spec: str | None) -> GeneratedTask | None:
    """The task a ``--dataset`` value names (``"chain:decisive=4"`` -> chain), else None."""
    if not spec:
        return None
    return GENERATED_TASKS.get(spec.partition(":")[0])


def generated_dataset(spec: str, split: str, size: int, seed: int) -> PromptDataset:
    """Problems of the generated task ``spec``; raises if ``spec`` names none."""
    task = generated_task(spec)
    if task is None:
        raise ValueError(f"dataset {spec!r} is not a generated task ({', '.join(GENERATED_TASKS)})")
    return task.dataset(spec, split, size, seed)
