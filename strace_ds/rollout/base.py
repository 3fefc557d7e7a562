"""The rollout interface every generation backend implements.

A rollout engine turns prompt token ids into groups of sampled answers with the log-probs
of the *sampling* distribution (after temperature), and receives new policy weights after
every optimizer step through :meth:`RolloutEngine.sync_weights` -- the same path for the
in-process engine and for an SGLang server, so the trainer never generates through ZeRO-3
hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

FINISH_REASONS = ("stop", "length", "abort")


SGLANG_SYNC_MODES = ("disk", "tensor")
"""How new weights reach SGLang servers: versioned safetensors + ``/update_weights_from_disk``,
or tensors sent over HTTP (colocated servers only)."""


@dataclass
class SamplingParams:
    """How answers are sampled."""

    max_new_tokens: int = 64
    """Hard cap on answer length in tokens; answers that hit it finish with ``"length"``."""
    temperature: float = 1.0
    """Softmax temperature; the returned log-probs are those of the tempered distribution."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = -1
    """Top-k sampling (-1 = off)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end an answer (the EOS id is always one of them)."""
    seed: int | None = None
    """Seed for this call; the same seed, weights and prompts give the same answers."""


@dataclass
class Generation:
    """Answers for ``len(prompts) * n`` samples; rows ``i*n .. i*n+n-1`` answer prompt i."""

    prompt_index: list[int]
    """For each row, the index of its prompt in the ``prompt_ids`` passed to ``generate``."""
    token_ids: list[list[int]]
    """Answer token ids per row (stop token included when the answer stopped on one)."""
    logprobs: list[list[float]]
    """Log-prob of each answer token under the sampling distribution, same lengths as token_ids."""
    finish_reasons: list[str]
    """One of ``FINISH_REASONS`` per row."""
    weight_version: int | None = None
    """The weight version that produced these answers (checked against the trainer's)."""

    def __len__(self) -> int:
        return len(self.token_ids)


def check_generate_request(prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> None:
    """Raise ``ValueError`` naming the field for a request no engine can serve."""
    if n < 1:
        raise ValueError(f"generate: n must be >= 1, got {n}")
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("generate: prompt_ids must be a non-empty list of non-empty id lists")
    if sampling.max_new_tokens < 1:
        raise ValueError(
            f"SamplingParams.max_new_tokens must be >= 1, got {sampling.max_new_tokens}"
        )
    if sampling.temperature < 0:
        raise ValueError(
            f"SamplingParams.temperature must be >= 0 (0 = greedy), got {sampling.temperature}"
        )
    if not 0.0 < sampling.top_p <= 1.0:
        raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {sampling.top_p}")
    if sampling.top_k != -1 and sampling.top_k < 1:
        raise ValueError(f"SamplingParams.top_k must be -1 (off) or >= 1, got {sampling.top_k}")


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer and the evaluator need from a generation backend."""

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> Generation:
        """Sample ``n`` answers for each prompt."""
        ...

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load new policy weights (HF parameter names, full unpartitioned tensors)."""
        ...

    def close(self) -> None:
        """Release processes, servers and memory held by the engine."""
        ...
