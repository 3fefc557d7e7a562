"""A small made-up `Experience` (4 rows, 3 response tokens), for the tests of the experience
producer and of the step metrics."""

from __future__ import annotations

import torch

from strace_ds.model.batch import RolloutBatch
from strace_ds.train.experience import Experience


def _experience(step: int, version: int) -> Experience:
    n, r = 4, 3
    batch = RolloutBatch(
        input_ids=torch.arange(n * 5).view(n, 5), attention_mask=torch.ones(n, 5, dtype=torch.long),
        position_ids=torch.arange(5).repeat(n, 1), response_ids=torch.ones(n, r, dtype=torch.long),
        response_mask=torch.ones(n, r, dtype=torch.bool), rollout_logprobs=-torch.rand(n, r),
        prompt_len=2,
    )  # fmt: skip
    return Experience(
        step=step, weight_version=version, indices=[0], batch=batch, rewards=torch.rand(n),
        correct=torch.rand(n), advantages=torch.randn(n), loss_rows=torch.ones(n, dtype=torch.bool),
        lengths=torch.full((n,), 3.0), truncated=[False] * n, zero_variance_frac=0.0,
        texts=["a"] * n, golds=["1"] * n, timings={"perf/rollout_s": 0.0, "perf/reward_s": 0.0},
    )  # fmt: skip
