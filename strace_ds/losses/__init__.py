"""The trace policy-loss family: GRPO, GSPO, the 80/20 mask, CISPO, SAPO, P-trace and S-trace.

Pure torch, no trainer imports, usable as a drop-in by any RL library::

    from strace_ds.losses import TraceConfig, policy_loss
    out = policy_loss(logprobs, old_logprobs, advantages, response_mask,
                      entropy=entropy, config=TraceConfig.preset("s_trace"))
    out.loss.backward()

The behaviour correction (rollout engine -> proximal policy) is :func:`behaviour_weights`,
the KL to a reference policy :func:`kl_penalty` (``docs/ALGORITHMS.md``).

The P-trace/S-trace formulas are this project's formalisation of the paper's abstract
("Beyond Uniform Credit Assignment: Selective Eligibility Traces for RLVR", Mou et al., 2026).
"""

from strace_ds.losses.behaviour import (
    BEHAVIOUR_CAP,
    BEHAVIOUR_CORRECTIONS,
    BEHAVIOUR_METRIC_NAMES,
    BEHAVIOUR_MODES,
    behaviour_weights,
)
from strace_ds.losses.config import (
    FORMS,
    LOG_RATIO_CLAMP,
    LOSS_AGGREGATIONS,
    PRESETS,
    SURROGATES,
    WEIGHT_CLOCKS,
    WINDOWS,
    TraceConfig,
)
from strace_ds.losses.kl import (
    KL_ESTIMATORS,
    KL_IN,
    KL_METRIC_NAMES,
    approx_kl_k3,
    kl_penalty,
    sequence_kl_penalty,
)
from strace_ds.losses.objective import (
    ENTROPY_METRIC_NAMES,
    METRIC_NAMES,
    PolicyLossOutput,
    aggregate_loss,
    clipped_surrogate,
    loss_denominator,
    policy_loss,
    sapo_gate,
    token_credit,
    token_objective,
)
from strace_ds.losses.trace import (
    entropy_threshold,
    past_log_weight,
    select_tokens,
    trace_log_ratio,
)

__all__ = [
    "BEHAVIOUR_CAP",
    "BEHAVIOUR_CORRECTIONS",
    "BEHAVIOUR_METRIC_NAMES",
    "BEHAVIOUR_MODES",
    "ENTROPY_METRIC_NAMES",
    "FORMS",
    "KL_ESTIMATORS",
    "KL_IN",
    "KL_METRIC_NAMES",
    "LOG_RATIO_CLAMP",
    "LOSS_AGGREGATIONS",
    "METRIC_NAMES",
    "PRESETS",
    "SURROGATES",
    "WEIGHT_CLOCKS",
    "WINDOWS",
    "PolicyLossOutput",
    "TraceConfig",
    "aggregate_loss",
    "approx_kl_k3",
    "behaviour_weights",
    "clipped_surrogate",
    "entropy_threshold",
    "kl_penalty",
    "loss_denominator",
    "past_log_weight",
    "policy_loss",
    "sapo_gate",
    "select_tokens",
    "sequence_kl_penalty",
    "token_credit",
    "token_objective",
    "trace_log_ratio",
]
