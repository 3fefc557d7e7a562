"""The trace policy-loss family: GRPO, GSPO, the 80/20 mask, P-trace and S-trace.

Pure torch, no trainer imports, usable as a drop-in by any RL library::

    from strace_ds.losses import TraceConfig, policy_loss
    out = policy_loss(logprobs, old_logprobs, advantages, response_mask,
                      entropy=entropy, config=TraceConfig.preset("s_trace"))
    out.loss.backward()

The P-trace/S-trace formulas are this project's formalisation of the paper's abstract
("Beyond Uniform Credit Assignment: Selective Eligibility Traces for RLVR", Mou et al., 2026).
"""

from strace_ds.losses.config import (
    LOG_RATIO_CLAMP,
    LOSS_AGGREGATIONS,
    PRESETS,
    WINDOWS,
    TraceConfig,
)
from strace_ds.losses.objective import (
    METRIC_NAMES,
    PolicyLossOutput,
    aggregate_loss,
    approx_kl_k3,
    clipped_surrogate,
    loss_denominator,
    policy_loss,
    token_credit,
)
from strace_ds.losses.trace import entropy_threshold, select_tokens, trace_log_ratio

__all__ = [
    "LOG_RATIO_CLAMP",
    "LOSS_AGGREGATIONS",
    "METRIC_NAMES",
    "PRESETS",
    "WINDOWS",
    "PolicyLossOutput",
    "TraceConfig",
    "aggregate_loss",
    "approx_kl_k3",
    "clipped_surrogate",
    "entropy_threshold",
    "loss_denominator",
    "policy_loss",
    "select_tokens",
    "token_credit",
    "trace_log_ratio",
]
