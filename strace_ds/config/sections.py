"""The sections of a run's config: one dataclass per component, each field with its help.

``data`` (:class:`DataConfig`), ``eval`` (:class:`EvalConfig`), ``rollouts``
(:class:`RolloutConfig`), ``objective`` (:class:`ObjectiveConfig`), ``optim``
(:class:`OptimConfig`), ``rewards`` (:class:`RewardConfig`) and ``run`` (:class:`RunConfig`).
Each validates itself when built; the rules that tie two sections together are
:class:`~strace_ds.config.TrainConfig`'s.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from strace_ds.config.fields import _at_least, _choice, _f, _looks_like_path, _Section
from strace_ds.losses import (
    BEHAVIOUR_CAP,
    BEHAVIOUR_CORRECTIONS,
    BEHAVIOUR_MODES,
    FORMS,
    KL_ESTIMATORS,
    KL_IN,
    LOSS_AGGREGATIONS,
    PRESETS,
    SURROGATES,
    WEIGHT_CLOCKS,
    WINDOWS,
    TraceConfig,
)
from strace_ds.losses.advantages import ADVANTAGE_METHODS as ADVANTAGE_ESTIMATORS
from strace_ds.rewards.overlong import OVERLONG_MODES
from strace_ds.rollout import ROLLOUT_ENGINES, SamplingParams
from strace_ds.rollout.base import SGLANG_SYNC_MODES
from strace_ds.train.lr_schedule import LR_SCHEDULES
from strace_ds.train.trackers import TRACKERS

# The allowed values of a field come from the module that implements them (one list each).
ADVANTAGE_METHODS: tuple[str, ...] = tuple(ADVANTAGE_ESTIMATORS)
OLD_LOGPROBS = ("auto", "trainer", "rollout")


# --------------------------------------------------------------------------------- sections
@dataclass
class DataConfig(_Section):
    """The policy to train and the prompts it trains on."""

    model: str | None = _f(None, "HF model id or local dir; empty = the embedded tiny Qwen3 policy")
    dataset: str = _f("synthetic", "'synthetic' or a HF dataset id / local json, jsonl, parquet")
    dataset_split: str = _f("train", "split of --dataset to train on")
    dataset_subset: str | None = _f(None, "dataset config name (HF 'subset'), if any")
    prompt_column: str = _f("problem", "column holding the question")
    answer_column: str = _f("answer", "column holding the gold answer (or a \\boxed{} solution)")
    dataset_size: int = _f(4000, "synthetic task: number of training problems")
    instruction: str | None = _f(
        None, "text appended to each question; empty = the dataset's default"
    )
    drop_long_prompts: bool = _f(
        False,
        "skip (and count) prompts longer than the model's context minus max_new_tokens; "
        "by default such a prompt stops the run at start-up, naming its row",
    )

    def _check(self) -> None:
        _at_least(self, 1, "dataset_size")
        model = self.model
        if model and _looks_like_path(model) and not Path(model).expanduser().exists():
            raise ValueError(
                f"model: local path {model!r} does not exist (working directory "
                f"{os.getcwd()}); pass an existing model directory, a hub id such as "
                "Qwen/Qwen3-1.7B, or leave --model out for the embedded tiny policy"
            )


@dataclass
class EvalConfig(_Section):
    """Held-out evaluation during the run."""

    eval_dataset: str | None = _f(
        None,
        "held-out set: 'synthetic' (default with the tiny policy), "
        "a benchmark name (math500, aime24, ...) or a dataset path",
    )
    eval_size: int = _f(200, "number of held-out problems evaluated")
    eval_every: int = _f(0, "evaluate every N steps (0 = only at start and end; -1 = never)")
    eval_k: int = _f(4, "samples per held-out problem (avg@k, pass@k)")
    eval_temperature: float = _f(1.0, "sampling temperature for evaluation (0 = greedy)")

    def _check(self) -> None:
        _at_least(self, 1, "eval_size", "eval_k")
        if self.eval_temperature < 0:
            raise ValueError(f"eval_temperature must be >= 0, got {self.eval_temperature}")


@dataclass
class RolloutConfig(_Section):
    """The rollout engine and how answers are sampled."""

    rollout: str = _f("hf", "rollout engine: 'hf' (in-process transformers) or 'sglang'")
    sglang_url: str | None = _f(None, "comma-separated SGLang server URLs (with --rollout sglang)")
    sglang_launch: str | None = _f(None, "python of an SGLang env: start a local server with it")
    sglang_sync: str = _f(
        "disk",
        "SGLang weight sync: 'disk' (versioned safetensors + "
        "/update_weights_from_disk) or 'tensor' (colocated servers only)",
    )
    sglang_timeout_s: float = _f(
        600.0,
        "overall deadline in seconds of one SGLang request (a group's generation, a weight "
        "load, a health check; retries included): a hung or dead server fails the step within "
        "it, naming the URL and the operation",
    )
    sglang_max_retries: int = _f(
        3,
        "retries of a failed SGLang request (refused connection, HTTP 429/502/503/504), "
        "within sglang_timeout_s",
    )
    sglang_max_concurrency: int = _f(32, "concurrent /generate requests per SGLang server")
    prompts_per_step: int = _f(32, "prompts sampled per step (across all ranks)")
    group_size: int = _f(8, "answers sampled per prompt (G)")
    max_new_tokens: int = _f(40, "answer length cap in tokens")
    temperature: float = _f(1.0, "rollout sampling temperature")
    top_p: float = _f(1.0, "rollout nucleus sampling mass")
    rollout_batch_size: int = _f(256, "rows per generate call of the in-process engine")
    max_staleness: int = _f(
        0,
        "asynchronous rollouts: answers of step t come from policy version max(0, t-1-K) and are "
        "generated while earlier steps train (0 = synchronous, on-policy up to the mini-batches)",
    )

    def sampling_params(self, seed: int | None = None) -> SamplingParams:
        """The rollouts' :class:`SamplingParams` (answer cap, temperature, top-p) for one call."""
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=seed,
        )

    def _check(self) -> None:
        _choice("rollout", self.rollout, ROLLOUT_ENGINES)
        _choice("sglang_sync", self.sglang_sync, SGLANG_SYNC_MODES)
        _at_least(self, 1, "prompts_per_step", "group_size", "max_new_tokens", "rollout_batch_size")
        _at_least(self, 0, "max_staleness")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for RL rollouts, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.rollout == "sglang" and not (self.sglang_url or self.sglang_launch):
            raise ValueError(
                "rollout='sglang' needs --sglang-url URL[,URL...] (running servers) or "
                "--sglang-launch PATH/TO/sglang-env/bin/python (start one)"
            )
        if self.rollout == "hf" and (self.sglang_url or self.sglang_launch):
            raise ValueError(
                "sglang_url/sglang_launch are set but rollout='hf'; add --rollout sglang"
            )
        if not self.sglang_timeout_s > 0:
            raise ValueError(
                f"sglang_timeout_s must be > 0 (seconds a request to an SGLang server may take, "
                f"retries included), got {self.sglang_timeout_s}"
            )
        if self.sglang_max_retries < 0:
            raise ValueError(f"sglang_max_retries must be >= 0, got {self.sglang_max_retries}")
        if self.sglang_max_concurrency < 1:
            raise ValueError(
                f"sglang_max_concurrency must be >= 1, got {self.sglang_max_concurrency}"
            )


def _override(help: str) -> Any:  # noqa: A002 - mirrors argparse
    """An optional override of the loss preset's value (``--help`` shows "the preset's")."""
    return field(default=None, metadata={"help": help, "shown_default": "the preset's"})


TRACE_OVERRIDES: tuple[str, ...] = TraceConfig.field_names()
"""The :class:`ObjectiveConfig` fields that override the loss preset's :class:`TraceConfig`."""


@dataclass
class ObjectiveConfig(_Section):
    """The objective: loss preset and its overrides, advantages, off-policy corrections, KL."""

    loss: str = _f("s_trace", "loss preset: " + ", ".join(PRESETS))

    # One override per TraceConfig field (TRACE_OVERRIDES; a test keeps the two lists equal):
    # None keeps the preset's value, anything else replaces it in trace_config() and is
    # validated by TraceConfig itself.
    lam: float | None = _override(
        "override the preset's lam: Trace decay lambda in [0, 1]: 0 keeps only the "
        "current token's ratio (PPO/GRPO), 1 averages every selected token so far "
        "uniformly."
    )
    window: str | None = _override(
        'override the preset\'s window: "causal": the eligibility trace over tokens up '
        'to t (P-trace, S-trace, GRPO); "sequence": one ratio per answer, the mean '
        "log-ratio over the whole answer (GSPO)."
    )
    clip_low: float | None = _override(
        "override the preset's clip_low: Lower trust-region width: ratios below 1 - "
        "clip_low are clipped (for A < 0)."
    )
    clip_high: float | None = _override(
        "override the preset's clip_high: Upper trust-region width: ratios above 1 + "
        "clip_high are clipped (for A > 0)."
    )
    entropy_top_quantile: float | None = _override(
        "override the preset's entropy_top_quantile: S-trace selection: keep the top q "
        "fraction of valid tokens by entropy, q in (0, 1]."
    )
    loss_on_selected_only: bool | None = _override(
        "override the preset's loss_on_selected_only: Take loss terms only on selected "
        "tokens (the 80/20 rule) rather than on every valid one."
    )
    loss_agg: str | None = _override(
        "override the preset's loss_agg: How token losses become a scalar: one of "
        "token_mean, seq_mean_token_mean, seq_mean_token_sum_norm."
    )
    log_ratio_clamp: float | None = _override(
        "override the preset's log_ratio_clamp: Bound on |ell| before exp so no token "
        "can produce inf/NaN."
    )
    form: str | None = _override(
        "override the preset's form: How the trace enters the loss, one of ratio, gate, "
        'weight: "ratio" clips the trace ratio (the clip bounds an average), "gate" is '
        "the ratio form in which no term pushes a token past its own clip bound, "
        '"weight" keeps each token\'s PPO-clipped term and multiplies it by a detached, '
        "bounded, decayed product of the past selected ratios."
    )
    weight_clock: str | None = _override(
        "override the preset's weight_clock: Weight form: what the decay lam counts, "
        'one of selected, position: "selected" tokens between k and t (decisions), or '
        '"position" (every valid token).'
    )
    weight_min: float | None = _override(
        "override the preset's weight_min: Weight form: lower bound of the historical "
        "weight w_t, in [0, 1]."
    )
    weight_max: float | None = _override(
        "override the preset's weight_max: Weight form: upper bound of the historical "
        "weight w_t, >= 1."
    )
    surrogate: str | None = _override(
        "override the preset's surrogate: Per-token objective on the ratio, one of clip, "
        'cispo, sapo: "clip" is PPO\'s clipped surrogate, "cispo" the detached weight '
        "clip(r, 1 - clip_low, 1 + clip_high) times A log pi (every token keeps its "
        'gradient; needs each token\'s own ratio), "sapo" the soft gate 4/tau sigmoid(tau '
        "(r - 1)) A (clip_low/clip_high unused)."
    )
    sapo_tau_pos: float | None = _override(
        "override the preset's sapo_tau_pos: SAPO: gate temperature for tokens with A > 0 "
        "(> 0; larger decays faster)."
    )
    sapo_tau_neg: float | None = _override(
        "override the preset's sapo_tau_neg: SAPO: gate temperature for tokens with A <= 0 "
        "(> 0; the paper takes it above sapo_tau_pos)."
    )

    old_logprobs: str = _f(
        "auto",
        "the ratio's denominator (proximal policy): 'trainer' recomputes it before the step's "
        "updates; 'rollout' takes the rollout engine's sampling log-probs and skips that forward "
        "(still run for the entropies when the preset selects tokens); 'auto' is 'rollout' "
        "where those are the trainer's own to rounding (in-process engine, max_staleness 0, "
        "float32 on both sides, no entropy selection, no behaviour correction), else 'trainer'",
    )
    behaviour_correction: str = _f(
        "none",
        "weight of each token's loss term for the gap between the sampling (behaviour) policy and "
        "the proximal one: " + ", ".join(BEHAVIOUR_CORRECTIONS) + " (docs/ALGORITHMS.md)",
    )
    behaviour_cap: float = _f(
        BEHAVIOUR_CAP,
        "cap C of the behaviour weight (truncate: min(w, C); mask: 0 outside [1/C, C])",
        allow_inf=True,
    )
    behaviour_mode: str = _f(
        "truncate",
        "behaviour weights above the cap: " + ", ".join(BEHAVIOUR_MODES) + " (TIS / MIS)",
    )
    kl_coef: float = _f(
        0.0,
        "beta of the KL to the frozen reference policy (the starting model); 0 loads no "
        "reference and changes nothing",
    )
    kl_estimator: str = _f(
        "k3", "per-token KL estimator: " + ", ".join(KL_ESTIMATORS) + " (k3 is GRPO's)"
    )
    kl_in: str = _f(
        "loss",
        "where the KL goes: 'loss' (beta * kl per token, with gradient) or "
        "'reward' (beta * sum of kl subtracted from each answer's reward)",
    )
    entropy_coef: float = _f(
        0.0,
        "entropy bonus: the loss minus entropy_coef x the policy's token entropy on the "
        "loss tokens, aggregated like the policy loss (with gradient; logged as "
        "policy/entropy_bonus); 0 changes nothing",
    )
    advantage: str = _f("grpo", "group advantage estimator: " + ", ".join(ADVANTAGE_METHODS))
    filter_zero_variance: bool = _f(False, "drop groups whose rewards are all equal (DAPO)")
    max_sampling_draws: int = _f(
        1,
        "DAPO dynamic sampling, with filter_zero_variance: draw more prompts (up to this many "
        "generate calls per step and rank) until every group of the batch has unequal rewards; "
        "1 = no re-sampling (silent groups are only masked out)",
    )
    overlong: str = _f("none", "truncated answers: " + ", ".join(OVERLONG_MODES))
    overlong_buffer: int = _f(8, "DAPO soft-overlong buffer in tokens")

    def trace_config(self) -> TraceConfig:
        """The loss preset with this objective's overrides applied."""
        overrides = {k: getattr(self, k) for k in TRACE_OVERRIDES if getattr(self, k) is not None}
        return TraceConfig.preset(self.loss, **overrides)

    def _check(self) -> None:
        _choice("loss", self.loss, tuple(PRESETS))
        _choice("advantage", self.advantage, ADVANTAGE_METHODS)
        _choice("overlong", self.overlong, OVERLONG_MODES)
        _choice("old_logprobs", self.old_logprobs, OLD_LOGPROBS)
        _choice("behaviour_correction", self.behaviour_correction, BEHAVIOUR_CORRECTIONS)
        _choice("behaviour_mode", self.behaviour_mode, BEHAVIOUR_MODES)
        _choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _choice("kl_in", self.kl_in, KL_IN)
        if self.loss_agg is not None:
            _choice("loss_agg", self.loss_agg, LOSS_AGGREGATIONS)
        for name, choices in (("window", WINDOWS), ("form", FORMS),
                              ("weight_clock", WEIGHT_CLOCKS),
                              ("surrogate", SURROGATES)):  # fmt: skip
            if getattr(self, name) is not None:
                _choice(name, getattr(self, name), choices)
        _at_least(self, 1, "max_sampling_draws")
        _at_least(self, 0, "overlong_buffer")
        if self.max_sampling_draws > 1 and not self.filter_zero_variance:
            raise ValueError(
                f"max_sampling_draws={self.max_sampling_draws} re-samples only silent groups; "
                "add --filter_zero_variance true (or leave max_sampling_draws at 1)"
            )
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0 (0 = no reference), got {self.kl_coef}")
        if not 0 <= self.entropy_coef < math.inf:
            raise ValueError(
                f"entropy_coef must be a finite number >= 0 (0 = no bonus), got {self.entropy_coef}"
            )
        if not self.behaviour_cap > 1:
            raise ValueError(
                f"behaviour_cap must be > 1 (weights are capped at C and, with mask, below 1/C), "
                f"got {self.behaviour_cap}; use inf for no cap"
            )
        self.trace_config()  # a bad override names its field


@dataclass
class OptimConfig(_Section):
    """Steps, batching and the optimizer."""

    steps: int = _f(30, "training steps (rollout + updates + weight sync)")
    mini_batches: int = _f(2, "policy updates per step, each on 1/mini_batches of the rollouts")
    epochs: int = _f(
        1,
        "passes over each step's rollouts (TRL num_iterations, verl ppo_epochs); each pass makes "
        "mini_batches updates, the mini-batches re-shuffled after the first pass",
    )
    micro_batch_size: int = _f(64, "rows per forward/backward on each rank")
    lr: float = _f(2e-4, "peak learning rate (AdamW)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_steps: int = _f(
        0,
        "linear learning-rate warm-up over the first N optimizer updates: update u (0-based) "
        "uses lr * (u + 1) / (N + 1), so the first update already moves",
    )
    lr_schedule: str = _f(
        "constant",
        "after warm-up: " + ", ".join(LR_SCHEDULES) + "; linear/cosine decay from lr towards "
        "min_lr_ratio * lr, reached one update after the run's last (of steps x mini_batches x "
        "epochs)",
    )
    min_lr_ratio: float = _f(
        0.0, "final learning rate of the linear/cosine decay, as a fraction of lr (in [0, 1])"
    )
    grad_clip: float = _f(1.0, "gradient norm clip")
    fused_logprobs: bool = _f(
        True,
        "log-probs and entropies from the decoder's last hidden states, chunk by chunk against "
        "the output embedding: no [rows, answer, vocab] logits in forward or backward",
    )
    max_tokens_per_micro_batch: int | None = _f(
        None,
        "token budget of a micro-batch: rows sorted by length and packed so that rows x longest "
        "(prompt + answer tokens) stays within it, padding trimmed per micro-batch; empty = "
        "auto (micro_batch_size x the step's longest row), 0 = fixed micro_batch_size rows",
    )
    pack_micro_batches: bool = _f(
        False,
        "padding-free micro-batches: each micro-batch's rows laid end to end in bins as wide "
        "as its longest row, positions restarting per row (the same update to rounding; the "
        "model is checked to attend within each row first; docs/PERFORMANCE.md, 'Packing')",
    )
    logprob_chunk_size: int = _f(
        0,
        "tokens per chunk of the log-prob/entropy computation "
        "(0 = auto: about 2**25 logits per chunk)",
    )
    lora_rank: int = _f(
        0,
        "LoRA adapter rank (peft): only the adapters train, the rollout engine receives the "
        "merged weights (0 = off: full fine-tuning; docs/TRAINING.md, 'LoRA')",
    )
    lora_alpha: float = _f(16.0, "LoRA scale numerator: the update is (lora_alpha / lora_rank) B A")
    lora_dropout: float = _f(
        0.0,
        "LoRA dropout; must stay 0: dropout would make the updated policy differ from the "
        "one that scored and sampled the answers (off-policy)",
    )
    lora_target_modules: str = _f(
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        "modules that get adapters, comma-separated (default: the attention and MLP "
        "projections of Qwen-style models), or 'all-linear'",
    )

    def _check(self) -> None:
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _at_least(self, 1, "steps", "mini_batches", "epochs", "micro_batch_size")
        _at_least(self, 0, "warmup_steps", "logprob_chunk_size", "lora_rank")
        if self.lora_dropout != 0:
            raise ValueError(
                f"lora_dropout must be 0, got {self.lora_dropout}: dropout makes the updated "
                "policy differ from the one that scored the answers (off-policy updates); "
                "drop --lora_dropout"
            )
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not self.lora_target_modules.strip(" ,"):
            raise ValueError(
                "lora_target_modules names no module; give module names (q_proj,v_proj,...) "
                "or 'all-linear'"
            )
        if self.max_tokens_per_micro_batch is not None and self.max_tokens_per_micro_batch < 0:
            raise ValueError(
                f"max_tokens_per_micro_batch must be >= 0 (0 = fixed micro_batch_size rows) or "
                f"empty for auto, got {self.max_tokens_per_micro_batch}"
            )
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.min_lr_ratio and self.lr_schedule == "constant":
            raise ValueError(
                f"min_lr_ratio ({self.min_lr_ratio}) has no effect with lr_schedule='constant'; "
                "add --lr_schedule linear (or cosine), or drop min_lr_ratio"
            )


@dataclass
class RewardConfig(_Section):
    """Rewards, the grading workers and how many grading failures a run tolerates."""

    reward: str = _f(
        "math_verify",
        "rewards as NAME[:WEIGHT],...: math_verify, format (a \\boxed{} answer present), "
        "synthetic, package.module:function (response, gold, example dict) -> float or TRL's "
        "(prompts, completions, **columns) -> list[float], or http://HOST:PORT/PATH (a batched "
        "POST); weighted sum, each logged as reward/<name> (docs/TRAINING.md, 'Rewards')",
    )
    reward_workers: int = _f(2, "grading worker processes per rank")
    reward_timeout_s: float = _f(10.0, "hard per-answer grading timeout (killed, scored 0)")
    remote_reward_timeout_s: float = _f(
        30.0,
        "wall-clock deadline of one batched POST to a remote reward (an http:// term of "
        "--reward), retries included; past it the batch's answers are grading errors",
    )
    max_bad_gold_frac: float = _f(
        0.5,
        "abort at start-up when more than this fraction of the training golds cannot be parsed "
        "by math-verify (their answers can only be grading errors; 1 = never abort)",
    )
    max_grading_error_frac: float = _f(
        0.5,
        "stop the run (after a checkpoint) when more than this fraction of a step's answers "
        "fail to grade for grading_error_patience consecutive steps",
    )
    grading_error_patience: int = _f(
        3, "consecutive steps above max_grading_error_frac before the run stops (0 = never)"
    )

    def _check(self) -> None:
        _at_least(self, 1, "reward_workers")
        if not self.reward_timeout_s > 0:
            raise ValueError(f"reward_timeout_s must be > 0, got {self.reward_timeout_s}")
        if not self.remote_reward_timeout_s > 0:
            raise ValueError(
                f"remote_reward_timeout_s must be > 0 seconds, got {self.remote_reward_timeout_s}"
            )
        for name in ("max_bad_gold_frac", "max_grading_error_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.grading_error_patience < 0:
            raise ValueError(
                f"grading_error_patience must be >= 0 (0 = never stop), got "
                f"{self.grading_error_patience}"
            )
        from strace_ds.rewards.registry import parse_reward_spec

        parse_reward_spec(self.reward)  # syntax and names; functions are imported at start-up


@dataclass
class RunConfig(_Section):
    """The run itself: DeepSpeed, seed, names and directories, checkpoints, logging, export."""

    ds_config: str = _f("ds_configs/zero3.json", "DeepSpeed config file")
    seed: int = _f(0, "seed of data order, sampling and initialisation")
    run_name: str | None = _f(None, "name of the run (default: <loss>-seed<seed>)")
    output_dir: str = _f(
        "outputs", "checkpoints and the exported policy go to <output_dir>/<run_name>"
    )
    log_dir: str = _f("runs", "TensorBoard logs go to <log_dir>/<run_name>")
    report_to: str = _f(
        "tensorboard",
        "experiment trackers that receive the scalars, comma-separated: "
        + ", ".join(TRACKERS)
        + " (wandb and mlflow need their pip extras: "
        "pip install -e '.[wandb]' / '.[mlflow]'; docs/TRAINING.md, 'Experiment trackers')",
    )
    save_every: int = _f(0, "checkpoint every N steps (0 = only at the end)")
    keep_last: int = _f(2, "checkpoints kept")
    resume: str | None = _f(None, "'auto' (latest in the run's dir) or a checkpoint path")
    resume_override: str | None = _f(
        None,
        "identity fields a --resume may change, comma-separated (loss, seed, dataset, batch "
        "geometry...: refused by default, naming the fields; never world_size)",
    )
    image_every: int = _f(10, "log a per-token credit picture every N steps (0 = never)")
    sample_every: int = _f(5, "log sample answers every N steps (0 = never)")
    export: bool = _f(True, "export the final policy in Hugging Face format")
    export_merged: bool = _f(
        False,
        "with --lora_rank > 0: the export also holds the merged policy (base + adapter) in "
        "Hugging Face format, beside the adapter; without LoRA the export is always merged",
    )
    stop_after: int | None = _f(
        None, "stop (after checkpointing) once this step is done; for preemption tests"
    )
    host_memory_reuse: bool = _f(
        True,
        "keep freed host memory for reuse (glibc: large CPU tensors off mmap); faster CPU "
        "steps, resident memory stays at its peak; changes no number",
    )

    def _check(self) -> None:
        if self.resume_override:
            from strace_ds.storage.run_identity import identity_overridable

            allowed = (*identity_overridable(), *TraceConfig.field_names())
            for name in self.resume_override.split(","):
                _choice("resume_override", name.strip(), allowed)
        _at_least(self, 1, "keep_last")
        _at_least(self, 0, "save_every", "image_every", "sample_every")
        from strace_ds.train.trackers import check_trackers

        check_trackers(self.report_to)
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(
                f"stop_after must be >= 1 (a step number; steps count from 1) or null, "
                f"got {self.stop_after}"
            )


SECTIONS: dict[str, type[_Section]] = {
    "data": DataConfig,
    "eval": EvalConfig,
    "rollouts": RolloutConfig,
    "objective": ObjectiveConfig,
    "optim": OptimConfig,
    "rewards": RewardConfig,
    "run": RunConfig,
}
"""Section name (attribute of :class:`TrainConfig`, YAML key, flag prefix) -> its class."""

FIELD_SECTIONS: dict[str, str] = {
    f.name: name
    for name, cls in SECTIONS.items()
    for f in fields(cls)  # type: ignore[arg-type]
}
"""Every field's (flat) name -> the section holding it, in section and field order."""

_clashes = [
    f"{f.name} ({name})"
    for name, cls in SECTIONS.items()
    for f in fields(cls)  # type: ignore[arg-type]
    if FIELD_SECTIONS[f.name] != name or f.name in SECTIONS
]
assert not _clashes, f"config field names must be unique and differ from sections: {_clashes}"
