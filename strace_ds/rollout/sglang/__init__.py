"""Rollouts from SGLang servers over HTTP (the trainer never imports SGLang itself).

* :mod:`~strace_ds.rollout.sglang.engine`: :class:`SGLangRolloutEngine` (generation, weight
  versions, weight sync; its module docstring is the overview);
* :mod:`~strace_ds.rollout.sglang.client`: the engine's errors and the deadline-bounded HTTP
  client;
* :mod:`~strace_ds.rollout.sglang.replies`: validation of ``/generate`` replies;
* :mod:`~strace_ds.rollout.sglang.server`: start and stop a server process (``SGLangServer``);
* :mod:`~strace_ds.rollout.sglang.weights`: checkpoints and tensor buckets for weight sync;
* :mod:`~strace_ds.rollout.sglang.ranks`: the engine as the trainer's ranks share it.
"""

from strace_ds.rollout.sglang.client import (
    CONNECT_TIMEOUT_S,
    HEALTH_TIMEOUT_S,
    RETRY_STATUS,
    SGLangError,
    SGLangReplyError,
    SGLangServerError,
    StaleWeightsError,
    operation,
)
from strace_ds.rollout.sglang.engine import SGLangRolloutEngine, row_seed
from strace_ds.rollout.sglang.replies import LOGPROB_TOLERANCE, parse_generate_response

__all__ = [
    "CONNECT_TIMEOUT_S",
    "HEALTH_TIMEOUT_S",
    "LOGPROB_TOLERANCE",
    "RETRY_STATUS",
    "SGLangError",
    "SGLangReplyError",
    "SGLangRolloutEngine",
    "SGLangServerError",
    "StaleWeightsError",
    "operation",
    "parse_generate_response",
    "row_seed",
]
