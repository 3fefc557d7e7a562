"""Typed configuration of the trace policy-loss family and its named presets.

Every member of the family -- GRPO, GSPO, the 80/20 high-entropy mask, CISPO, SAPO, P-trace
and S-trace -- is one :class:`TraceConfig`; the loss code has no per-algorithm branches.
The presets and their semantics are this project's formalisation of "Beyond Uniform Credit
Assignment: Selective Eligibility Traces for RLVR" (Mou et al., 2026), whose abstract is the
only public text: see ``docs/ALGORITHMS.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

WINDOWS = ("causal", "sequence")
FORMS = ("ratio", "gate", "weight")
"""How the trace enters the loss (``docs/ALGORITHMS.md``, "Trace forms"; our formalisation)."""
WEIGHT_CLOCKS = ("selected", "position")
"""What the weight form's decay counts: selected tokens (decisions) or answer positions."""
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
SURROGATES = ("clip", "cispo", "sapo")
"""The per-token objective applied to the (trace) ratio ``r_t`` (``docs/ALGORITHMS.md``,
"Token objectives"): PPO's clipped surrogate, CISPO's detached clipped importance weight times
the log-prob (MiniMax-M1), or SAPO's soft temperature gate (Qwen, arXiv 2511.20347)."""

LOG_RATIO_CLAMP = 20.0
"""Default bound on the trace log-ratio ``ell`` before ``exp``: ``r = exp(clamp(ell, -20, 20))``.

``exp(20) ~ 4.9e8`` is far outside any trust region (the clipped objective has no gradient
there anyway), while ``exp(ell)`` with an unclamped ``ell`` of a few hundred would overflow to
``inf`` in float32 and turn the whole loss into NaN. Outside the bound the ratio has zero
gradient, exactly as a clipped token has."""


@dataclass(frozen=True)
class TraceConfig:
    """One member of the trace policy-loss family (see ``policy_loss`` for the formulas)."""

    lam: float = 0.0
    """Trace decay lambda in [0, 1]: 0 keeps only the current token's ratio (PPO/GRPO),
    1 averages every selected token so far uniformly. Unused by ``window="sequence"``."""
    window: str = "causal"
    """``"causal"``: the eligibility trace over tokens up to t (P-trace, S-trace, GRPO);
    ``"sequence"``: one ratio per answer, the mean log-ratio over the whole answer (GSPO)."""
    clip_low: float = 0.2
    """Lower trust-region width: ratios below ``1 - clip_low`` are clipped (for A < 0)."""
    clip_high: float = 0.2
    """Upper trust-region width: ratios above ``1 + clip_high`` are clipped (for A > 0)."""
    entropy_top_quantile: float | None = None
    """S-trace selection: keep the top ``q`` fraction of valid tokens by entropy, q in (0, 1].
    ``None`` selects every valid token (no sparsity)."""
    loss_on_selected_only: bool = False
    """Take loss terms only on selected tokens (the 80/20 rule) rather than on every valid one."""
    loss_agg: str = "token_mean"
    """How token losses become a scalar: one of ``LOSS_AGGREGATIONS``."""
    log_ratio_clamp: float = LOG_RATIO_CLAMP
    """Bound on ``|ell|`` before ``exp`` so no token can produce inf/NaN."""
    form: str = "ratio"
    """How the trace enters the loss, one of ``FORMS``: ``"ratio"`` clips the trace ratio
    (the clip bounds an average), ``"gate"`` is the ratio form in which no term pushes a token
    past its own clip bound, ``"weight"`` keeps each token's PPO-clipped term and multiplies it
    by a detached, bounded, decayed product of the past selected ratios."""
    weight_clock: str = "selected"
    """Weight form: what the decay ``lam`` counts, one of ``WEIGHT_CLOCKS``: ``"selected"``
    tokens between k and t (decisions), or ``"position"`` (every valid token)."""
    weight_min: float = 0.0
    """Weight form: lower bound of the historical weight ``w_t``, in [0, 1]."""
    weight_max: float = 2.0
    """Weight form: upper bound of the historical weight ``w_t``, >= 1."""
    surrogate: str = "clip"
    """Per-token objective on the ratio, one of ``SURROGATES``: ``"clip"`` is PPO's clipped
    surrogate, ``"cispo"`` the detached weight ``clip(r, 1 - clip_low, 1 + clip_high)`` times
    ``A log pi`` (every token keeps its gradient; needs each token's own ratio), ``"sapo"``
    the soft gate ``4/tau sigmoid(tau (r - 1)) A`` (clip_low/clip_high unused)."""
    sapo_tau_pos: float = 1.0
    """SAPO: gate temperature for tokens with ``A > 0`` (> 0; larger decays faster)."""
    sapo_tau_neg: float = 1.05
    """SAPO: gate temperature for tokens with ``A <= 0`` (> 0; the paper takes it above
    ``sapo_tau_pos``)."""

    def __post_init__(self) -> None:
        _check_number("lam", self.lam, "a float in [0, 1]")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"TraceConfig.lam must be in [0, 1], got {self.lam}")
        if self.window not in WINDOWS:
            raise ValueError(
                f"TraceConfig.window must be one of {', '.join(WINDOWS)}; got {self.window!r}"
            )
        if self.loss_agg not in LOSS_AGGREGATIONS:
            raise ValueError(
                f"TraceConfig.loss_agg must be one of {', '.join(LOSS_AGGREGATIONS)}; "
                f"got {self.loss_agg!r}"
            )
        for name in ("clip_low", "clip_high"):
            value = getattr(self, name)
            _check_number(name, value, "a float >= 0")
            if value < 0:
                raise ValueError(f"TraceConfig.{name} must be >= 0, got {value}")
        if self.surrogate not in SURROGATES:
            raise ValueError(
                f"TraceConfig.surrogate must be one of {', '.join(SURROGATES)}; "
                f"got {self.surrogate!r}"
            )
        if self.surrogate == "cispo" and self.clip_low > 1.0:
            raise ValueError(
                f"TraceConfig.clip_low must be <= 1 with surrogate='cispo' (1 = no lower bound "
                f"on the importance weight), got {self.clip_low}"
            )
        if self.surrogate != "cispo" and self.clip_low >= 1.0:
            raise ValueError(
                f"TraceConfig.clip_low must be < 1 (the lower bound 1 - clip_low must stay "
                f"positive), got {self.clip_low}"
            )
        q = self.entropy_top_quantile
        if q is not None:
            _check_number("entropy_top_quantile", q, "None or a float in (0, 1]")
            if not 0.0 < q <= 1.0:
                raise ValueError(
                    f"TraceConfig.entropy_top_quantile must be None or in (0, 1], got {q}"
                )
        _check_number("log_ratio_clamp", self.log_ratio_clamp, "a positive float")
        if not self.log_ratio_clamp > 0:
            raise ValueError(f"TraceConfig.log_ratio_clamp must be > 0, got {self.log_ratio_clamp}")
        for name, choices in (("form", FORMS), ("weight_clock", WEIGHT_CLOCKS)):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"TraceConfig.{name} must be one of {', '.join(choices)}; "
                    f"got {getattr(self, name)!r}"
                )
        _check_number("weight_min", self.weight_min, "a float in [0, 1]")
        if not 0.0 <= self.weight_min <= 1.0:
            raise ValueError(f"TraceConfig.weight_min must be in [0, 1], got {self.weight_min}")
        _check_number("weight_max", self.weight_max, "a float >= 1 (inf for no bound)")
        if not self.weight_max >= 1.0:
            raise ValueError(
                f"TraceConfig.weight_max must be >= 1 (inf for no bound), got {self.weight_max}"
            )
        for name in ("sapo_tau_pos", "sapo_tau_neg"):
            value = getattr(self, name)
            _check_number(name, value, "a finite float > 0")
            if not 0.0 < value < math.inf:
                raise ValueError(f"TraceConfig.{name} must be a finite float > 0, got {value}")
        self._check_surrogate_composition()
        if self.form == "weight" and self.window != "causal":
            raise ValueError(
                "TraceConfig.form='weight' needs window='causal': each token keeps its own "
                "ratio and the weight is a causal trace (window='sequence' is GSPO's ratio form)"
            )

    def _check_surrogate_composition(self) -> None:
        """CISPO's weight is a token's own importance ratio, and the token gate is defined by
        the hard clip's trust region: refuse the combinations where either has no meaning."""
        if self.surrogate == "clip":
            return
        if self.form == "gate":
            raise ValueError(
                f"TraceConfig.surrogate={self.surrogate!r} does not compose with form='gate': "
                "the gate is the hard clip's trust region; use form='ratio' or 'weight'"
            )
        if self.surrogate == "cispo" and (
            self.window != "causal" or (self.form == "ratio" and self.lam != 0.0)
        ):
            raise ValueError(
                "TraceConfig.surrogate='cispo' needs each token's own ratio: window='causal' "
                f"with lam=0 (form='ratio'), or form='weight' (got window={self.window!r}, "
                f"lam={self.lam}, form={self.form!r})"
            )

    @property
    def uses_entropy(self) -> bool:
        """True when the loss needs token entropies (a selection is configured)."""
        return self.entropy_top_quantile is not None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TraceConfig:
        """The named preset (see ``PRESETS``), optionally with some fields replaced."""
        if name not in PRESETS:
            raise ValueError(f"unknown loss preset {name!r}; choose one of {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _check_number(name: str, value: Any, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"TraceConfig.{name} must be {expected}, got {value!r}")


PRESETS: dict[str, TraceConfig] = {
    # PPO-clip on token ratios with group-relative advantages (Shao et al., 2024), DAPO's
    # token-mean aggregation.
    "grpo": TraceConfig(lam=0.0, window="causal", clip_low=0.2, clip_high=0.2),
    # Group Sequence Policy Optimization (Zheng et al., 2025): one length-normalised ratio per
    # answer, the paper's clip range and sequence-mean aggregation. lam is unused.
    "gspo": TraceConfig(
        lam=1.0, window="sequence", clip_low=3e-4, clip_high=4e-4, loss_agg="seq_mean_token_mean"
    ),
    # "Beyond the 80/20 rule" (Wang et al., 2025): GRPO restricted to the top-20% entropy tokens.
    "highent_grpo": TraceConfig(
        lam=0.0, clip_low=0.2, clip_high=0.2, entropy_top_quantile=0.2, loss_on_selected_only=True
    ),
    # P-trace: a decaying causal trace of the token log-ratios. In the weight form (the credit
    # study's most stable form, docs/RESULTS.md "Credit-assignment study"): each token keeps its own
    # PPO-clipped term, weighted by a detached, bounded, decayed product of the past ratios.
    # form="ratio" is the trace ratio clipped per token (the presets' first form).
    "p_trace": TraceConfig(lam=0.95, window="causal", clip_low=0.2, clip_high=0.28, form="weight"),
    # CISPO (MiniMax-M1, Chen et al. 2025, arXiv 2506.13585): the detached, clipped token
    # importance weight times A log pi, token-mean over all tokens of the batch (the paper's
    # 1 / sum_i |o_i|). No lower bound (clip_low = 1: the weight's floor is 0), as the paper;
    # the paper does not publish its eps_high: clip_high = 4 caps the weight at 5, TRL's
    # recommendation (the epsilon_max = 5 of ScaleRL, Khatri et al. 2025).
    "cispo": TraceConfig(lam=0.0, window="causal", clip_low=1.0, clip_high=4.0, surrogate="cispo"),
    # SAPO (Soft Adaptive Policy Optimization, Gao et al. 2025, arXiv 2511.20347): the soft
    # gate 4/tau sigmoid(tau (r - 1)) on each token's ratio, tau_pos = 1.0 for A > 0 and
    # tau_neg = 1.05 otherwise, mean over answers of each answer's token mean (the paper's
    # 1/G sum_i 1/|y_i| sum_t). clip_low / clip_high are unused.
    "sapo": TraceConfig(
        lam=0.0,
        window="causal",
        loss_agg="seq_mean_token_mean",
        surrogate="sapo",
        sapo_tau_pos=1.0,
        sapo_tau_neg=1.05,
    ),
    # S-trace: the P-trace whose trace only ticks on the top-20% entropy tokens.
    "s_trace": TraceConfig(
        lam=0.95,
        window="causal",
        clip_low=0.2,
        clip_high=0.28,
        entropy_top_quantile=0.2,
        form="weight",
    ),
}
