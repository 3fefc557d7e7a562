"""Typed configuration of a training run: one dataclass per component, validated at start-up.

A run is a :class:`TrainConfig` made of sections, each a dataclass that owns its fields, their
one-line ``help`` (also the CLI's help text) and its validation:

* ``data`` (:class:`DataConfig`): the policy and the training prompts;
* ``eval`` (:class:`EvalConfig`): the held-out evaluation;
* ``rollouts`` (:class:`RolloutConfig`): the rollout engine and how answers are sampled;
* ``objective`` (:class:`ObjectiveConfig`): the loss preset and its overrides (one per
  :class:`~strace_ds.losses.TraceConfig` field), advantages, off-policy corrections, KL;
* ``optim`` (:class:`OptimConfig`): steps, batching and the optimizer;
* ``rewards`` (:class:`RewardConfig`): rewards, grading workers and their failure limits;
* ``run`` (:class:`RunConfig`): DeepSpeed, seed, names, directories, checkpoints, logs.

Field names are unique across sections, so everything also reads flat: ``cfg.lr`` is
``cfg.optim.lr``, ``TrainConfig(lr=1e-4)`` sets it, ``--lr`` and ``--optim.lr`` are the same
flag, and a YAML/JSON file may nest (``optim: {lr: 1e-4}``), stay flat (``lr: 1e-4``) or mix.
The CLI (``scripts/train.py``), files (``--config run.yaml``) and notebooks all build the same
object; validation names the field and the fix.
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import json
import math
import os
import re
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from strace_ds.losses import (
    BEHAVIOUR_CAP,
    BEHAVIOUR_CORRECTIONS,
    BEHAVIOUR_MODES,
    FORMS,
    KL_ESTIMATORS,
    KL_IN,
    LOSS_AGGREGATIONS,
    PRESETS,
    WEIGHT_CLOCKS,
    WINDOWS,
    TraceConfig,
)
from strace_ds.rollout import ROLLOUT_ENGINES, SamplingParams
from strace_ds.train.lr_schedule import LR_SCHEDULES

ADVANTAGE_METHODS = ("grpo", "dr_grpo", "rloo")
OVERLONG_MODES = ("none", "mask", "soft")
OLD_LOGPROBS = ("trainer", "rollout")


def _f(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A config field: its default, its one-line ``help`` and options for the checks.

    ``allow_inf=True``: a float field where infinity is meaningful; ``shown_default``: what
    ``--help`` prints as the default instead of the value.
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help, **kw})


def _base_type(hint: Any) -> type:
    """``X`` of a resolved annotation ``X`` or ``X | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _is_optional(hint: Any) -> bool:
    """True when a resolved annotation admits None (``X | None``)."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return union and type(None) in typing.get_args(hint)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of a config class (its fields' types, inherited ones included)."""
    return typing.get_type_hints(cls)


class _Section:
    """Base of the config sections: checks from the annotations, then the section's own rules.

    A section validates itself when built and on :meth:`validate` (after edits); rules that tie
    two sections together are :class:`TrainConfig`'s.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field of this section."""
        _validate_field_types(self)
        self._check()

    def _check(self) -> None:
        """The section's own rules, run after the type checks (fields are typed by then)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


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
    sglang_sync: str = _f("disk", "SGLang weight sync: 'disk' (versioned safetensors + "
                          "/update_weights_from_disk) or 'tensor' (colocated servers only)")
    sglang_timeout_s: float = _f(
        600.0,
        "overall deadline in seconds of one SGLang request (a group's generation, a weight "
        "load, a health check; retries included): a hung or dead server fails the step within "
        "it, naming the URL and the operation",
    )
    sglang_max_retries: int = _f(
        3, "retries of a failed SGLang request (refused connection, HTTP 429/502/503/504), "
        "within sglang_timeout_s"
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
        _choice("sglang_sync", self.sglang_sync, ("disk", "tensor"))
        _at_least(
            self, 1, "prompts_per_step", "group_size", "max_new_tokens", "rollout_batch_size"
        )
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


@dataclass
class _LossPreset(_Section):
    loss: str = _f("s_trace", "loss preset: " + ", ".join(PRESETS))


def _attribute_docs(cls: type) -> dict[str, str]:
    """A class's attribute docstrings (the string after ``name: type = default``), one line each."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):  # no source (frozen, zipped): help without docs
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for stmt, after in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def _first_sentence(doc: str) -> str:
    """Up to the first '. ' before a capital or a quote: the rest is about TraceConfig itself."""
    return re.split(r"(?<=\.)\s+(?=[A-Z`])", doc, maxsplit=1)[0]


_DOC_CONSTANTS = {"LOSS_AGGREGATIONS": LOSS_AGGREGATIONS, "WINDOWS": WINDOWS, "FORMS": FORMS,
                  "WEIGHT_CLOCKS": WEIGHT_CLOCKS}


def _trace_override_fields() -> list[tuple[str, Any, Any]]:
    """One optional override per :class:`TraceConfig` field, typed and documented by it.

    ``None`` (the default) keeps the loss preset's value; anything else replaces it in
    :meth:`ObjectiveConfig.trace_config` and is validated by ``TraceConfig`` itself.
    """
    hints = typing.get_type_hints(TraceConfig)
    docs = _attribute_docs(TraceConfig)
    out = []
    for f in fields(TraceConfig):
        doc = re.sub(
            r"``([^`]*)``",
            lambda m: ", ".join(_DOC_CONSTANTS.get(m.group(1), (m.group(1),))),
            _first_sentence(docs.get(f.name, "")),
        )
        help_text = f"override the preset's {f.name}" + (f": {doc}" if doc else "")
        meta = {"help": help_text, "shown_default": "the preset's"}
        out.append((f.name, _base_type(hints[f.name]) | None, field(default=None, metadata=meta)))
    return out


# Between ``loss`` and the rest of ObjectiveConfig: the preset's overrides, from TraceConfig.
_TraceOverrides = make_dataclass("_TraceOverrides", _trace_override_fields(), bases=(_LossPreset,))
_TraceOverrides.__module__ = __name__
TRACE_OVERRIDES: tuple[str, ...] = TraceConfig.field_names()
"""The :class:`ObjectiveConfig` fields that override the loss preset's :class:`TraceConfig`."""


@dataclass
class ObjectiveConfig(_TraceOverrides):
    """The objective: loss preset and its overrides, advantages, off-policy corrections, KL."""

    old_logprobs: str = _f(
        "trainer",
        "the ratio's denominator (proximal policy): 'trainer' recomputes it before the step's "
        "updates; 'rollout' takes the rollout engine's sampling log-probs and skips that forward "
        "(still run for the entropies when the preset selects tokens)",
    )
    behaviour_correction: str = _f(
        "none",
        "weight of each token's loss term for the gap between the sampling (behaviour) policy and "
        "the proximal one: " + ", ".join(BEHAVIOUR_CORRECTIONS) + " (docs/ALGORITHMS.md)",
    )
    behaviour_cap: float = _f(
        BEHAVIOUR_CAP, "cap C of the behaviour weight (truncate: min(w, C); mask: 0 outside "
        "[1/C, C])", allow_inf=True,
    )
    behaviour_mode: str = _f("truncate", "behaviour weights above the cap: " + ", ".join(
        BEHAVIOUR_MODES) + " (TIS / MIS)")
    kl_coef: float = _f(
        0.0, "beta of the KL to the frozen reference policy (the starting model); 0 loads no "
        "reference and changes nothing",
    )
    kl_estimator: str = _f("k3", "per-token KL estimator: " + ", ".join(KL_ESTIMATORS)
                           + " (k3 is GRPO's)")
    kl_in: str = _f("loss", "where the KL goes: 'loss' (beta * kl per token, with gradient) or "
                    "'reward' (beta * sum of kl subtracted from each answer's reward)")
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
        overrides = {
            k: getattr(self, k) for k in TRACE_OVERRIDES if getattr(self, k) is not None
        }
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
                              ("weight_clock", WEIGHT_CLOCKS)):  # fmt: skip
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
        "min_lr_ratio * lr, reached one update after the run's last (steps x mini_batches)",
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
    logprob_chunk_size: int = _f(0, "tokens per chunk of the log-prob/entropy computation "
                                 "(0 = auto: about 2**25 logits per chunk)")

    def _check(self) -> None:
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _at_least(self, 1, "steps", "mini_batches", "epochs", "micro_batch_size")
        _at_least(self, 0, "warmup_steps", "logprob_chunk_size")
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
        "synthetic, or package.module:function (response, gold, example dict) -> float; "
        "weighted sum, each logged as reward/<name> (docs/TRAINING.md, 'Rewards')",
    )
    reward_workers: int = _f(2, "grading worker processes per rank")
    reward_timeout_s: float = _f(10.0, "hard per-answer grading timeout (killed, scored 0)")
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
    save_every: int = _f(0, "checkpoint every N steps (0 = only at the end)")
    keep_last: int = _f(2, "checkpoints kept")
    resume: str | None = _f(None, "'auto' (latest in the run's dir) or a checkpoint path")
    image_every: int = _f(10, "log a per-token credit picture every N steps (0 = never)")
    sample_every: int = _f(5, "log sample answers every N steps (0 = never)")
    export: bool = _f(True, "export the final policy in Hugging Face format")
    stop_after: int | None = _f(
        None, "stop (after checkpointing) once this step is done; for preemption tests"
    )

    def _check(self) -> None:
        _at_least(self, 1, "keep_last")
        _at_least(self, 0, "save_every", "image_every", "sample_every")
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
    f.name: name for name, cls in SECTIONS.items() for f in fields(cls)  # type: ignore[arg-type]
}
"""Every field's (flat) name -> the section holding it, in section and field order."""

_clashes = [
    f"{f.name} ({name})"
    for name, cls in SECTIONS.items()
    for f in fields(cls)  # type: ignore[arg-type]
    if FIELD_SECTIONS[f.name] != name or f.name in SECTIONS
]
assert not _clashes, f"config field names must be unique and differ from sections: {_clashes}"


# ----------------------------------------------------------------------------- TrainConfig
@dataclass(init=False)
class TrainConfig:
    """Everything a run needs. Defaults train the embedded tiny policy on the synthetic task.

    Built from sections (``TrainConfig(optim=OptimConfig(lr=1e-4))``, or a mapping of the
    section's fields), from flat field names (``TrainConfig(lr=1e-4)``), or both (flat names
    override the sections given). Every section field also reads and writes flat:
    ``cfg.lr is cfg.optim.lr``; call :meth:`validate` after edits.
    """

    data: DataConfig
    eval: EvalConfig
    rollouts: RolloutConfig
    objective: ObjectiveConfig
    optim: OptimConfig
    rewards: RewardConfig
    run: RunConfig

    def __init__(self, **kwargs: Any) -> None:
        given: dict[str, Any] = {}
        flat: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in kwargs.items():
            if key in SECTIONS:
                given[key] = value
            elif key in FIELD_SECTIONS:
                flat[FIELD_SECTIONS[key]][key] = value
            else:
                raise TypeError(
                    f"TrainConfig() got an unexpected keyword argument {key!r}; fields are "
                    f"{', '.join(FIELD_SECTIONS)}, sections {', '.join(SECTIONS)}"
                )
        for name, cls in SECTIONS.items():
            setattr(self, name, _build_section(name, cls, given.get(name), flat[name]))
        self._check_across()

    # --- derived ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.run_name or f"{self.loss}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def trace_config(self) -> TraceConfig:
        """The loss preset with this run's overrides applied."""
        return self.objective.trace_config()

    def sampling_params(self, seed: int | None = None) -> SamplingParams:
        """The rollouts' sampling parameters for one generate call."""
        return self.rollouts.sampling_params(seed)

    def to_dict(self, nested: bool = False) -> dict[str, Any]:
        """Flat ``{field: value}`` (default), or ``{section: {field: value}}`` with ``nested``.

        Either form goes back through :meth:`from_dict` (and a YAML/JSON file) unchanged.
        """
        if nested:
            return {name: asdict(getattr(self, name)) for name in SECTIONS}
        return {name: getattr(self, name) for name in FIELD_SECTIONS}

    # --- validation -------------------------------------------------------------------------
    def validate(self, world_size: int | None = None) -> None:
        """Raise ``ValueError`` naming the first bad field; ``world_size`` adds divisibility."""
        for name in SECTIONS:
            getattr(self, name).validate()
        self._check_across()
        if world_size is not None:
            self._validate_sizes(world_size)

    def _check_across(self) -> None:
        """Rules that tie two sections together (each section has checked its own)."""
        if self.group_size < 2 and self.advantage in ("grpo", "rloo"):
            raise ValueError(
                f"group_size must be >= 2 for advantage={self.advantage!r} (a group needs a "
                f"baseline), got {self.group_size}"
            )
        if self.overlong == "soft" and self.overlong_buffer >= self.max_new_tokens:
            raise ValueError(
                f"overlong_buffer ({self.overlong_buffer}) must be < max_new_tokens "
                f"({self.max_new_tokens})"
            )

    def _validate_sizes(self, world_size: int) -> None:
        if self.prompts_per_step % world_size:
            raise ValueError(
                f"prompts_per_step ({self.prompts_per_step}) must be divisible by the number of "
                f"ranks ({world_size})"
            )
        rows = self.prompts_per_step // world_size * self.group_size
        if rows % self.mini_batches:
            raise ValueError(
                f"mini_batches ({self.mini_batches}) must divide the rows per rank per step "
                f"(prompts_per_step / ranks * group_size = {rows})"
            )
        mini = rows // self.mini_batches
        if mini % min(self.micro_batch_size, mini):
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) must divide the rows per mini-batch "
                f"on each rank ({mini}); try {_divisors_hint(mini)}"
            )

    def micro_batches_per_update(self, world_size: int) -> tuple[int, int]:
        """``(rows per micro-batch, micro-batches per optimizer update)`` on each rank."""
        mini = self.prompts_per_step // world_size * self.group_size // self.mini_batches
        micro = min(self.micro_batch_size, mini)
        return micro, mini // micro

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Load a YAML or JSON file (flat field names, sections, or both), then ``overrides``."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        where = f"config file {str(path)!r}"
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{where} cannot be read: {exc.strerror or exc}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where} is not UTF-8 text: {_bad_byte(raw, exc)}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{where}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{where}: {_yaml_error(exc)}") from None
        if data is None:
            raise ValueError(f"{where} is empty; write one 'field: value' per line (see --help)")
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping of field: value")
        file_values, given = _nest(data), _nest(overrides)
        return cls(**{name: {**file_values[name], **given[name]} for name in SECTIONS})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from ``{field: value}``, ``{section: {field: value}}``, ``{"section.field":
        value}`` or a mix; values are type-checked against the fields' annotations."""
        return cls(**_nest(data))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--flag`` per field, grouped by section in ``--help``.

        ``--field_name``, ``--field-name`` and ``--section.field_name`` (also
        ``--section.field-name``, not listed) are the same flag; the last one given wins.
        """
        for section, section_cls in SECTIONS.items():
            group = parser.add_argument_group(
                section,
                f"{_first_line(section_cls)}\nIn a config file: '{section}:' (or flat); "
                f"flags also as --{section}.FIELD.",
            )
            for f in fields(section_cls):  # type: ignore[arg-type]
                dashed = f.name.replace("_", "-")
                flags = [f"--{f.name}"] + ([f"--{dashed}"] if dashed != f.name else [])
                flags.append(f"--{section}.{f.name}")
                base = _base_type(_hints(section_cls)[f.name])
                kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
                if base is bool:
                    kwargs.update(type=_parse_bool, metavar="true|false")
                else:
                    kwargs.update(type=_cli_caster(f.name, base), metavar=_METAVARS[base])
                shown = f.metadata.get("shown_default", _default(f))
                group.add_argument(
                    *flags, **kwargs, help=f"{f.metadata.get('help', '')} (default: {shown})"
                )
                if dashed != f.name:  # accepted, not listed: --help stays one line per flag
                    group.add_argument(f"--{section}.{dashed}", **kwargs, help=argparse.SUPPRESS)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """Build from parsed CLI args: ``--config FILE`` first, then the flags given."""
        given = {name: getattr(args, name) for name in FIELD_SECTIONS if hasattr(args, name)}
        if getattr(args, "config", None):
            return cls.from_file(args.config, **given)
        return cls.from_dict(given)


def _flat_property(section: str, name: str, doc: str) -> property:
    def get(self: TrainConfig) -> Any:
        return getattr(getattr(self, section), name)

    def set_(self: TrainConfig, value: Any) -> None:
        setattr(getattr(self, section), name, value)

    return property(get, set_, doc=f"``{section}.{name}``: {doc}")


for _name, _section in FIELD_SECTIONS.items():
    _field = next(f for f in fields(SECTIONS[_section]) if f.name == _name)  # type: ignore[arg-type]
    setattr(TrainConfig, _name, _flat_property(_section, _name, _field.metadata.get("help", "")))
del _name, _section, _field


def _build_section(name: str, cls: type[_Section], given: Any, flat: dict[str, Any]) -> Any:
    """One section of a TrainConfig: a copy of ``given`` (instance or mapping) with ``flat``."""
    if given is None:
        return cls(**flat)
    if isinstance(given, cls):
        return replace(given, **flat)  # a copy (never shared between configs), validated
    if isinstance(given, Mapping):
        unknown = {str(k) for k in given} - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise _unknown_fields({name: sorted(unknown)})
        return cls(**{**given, **flat})
    raise ValueError(
        f"{name} must be an instance of {cls.__name__} or a mapping of its fields (field: value), "
        f"got {given!r}"
    )


def _nest(data: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
    """Flat, dotted and nested keys -> ``{section: {field: value}}``, values type-checked.

    Unknown keys are reported all at once (per section for nested ones); a field given twice
    in one mapping (``lr`` and ``optim: {lr: ...}``) is an error.
    """
    placed: dict[str, tuple[str, str, Any]] = {}  # field -> (section, as spelled, value)
    unknown: dict[str | None, list[str]] = {}

    def place(section: str, key: Any, value: Any, spelled: str) -> None:
        name = str(key)
        if FIELD_SECTIONS.get(name) != section:
            unknown.setdefault(section, []).append(name)
        elif name in placed:
            raise ValueError(
                f"{name} is given twice, as {placed[name][1]!r} and {spelled!r}; keep one"
            )
        else:
            placed[name] = (section, spelled, value)

    for key, value in data.items():
        text = str(key)  # YAML keys may be numbers
        head, _, tail = text.partition(".")
        if text in SECTIONS:
            if value is None:  # ``optim:`` with nothing under it
                continue
            if not isinstance(value, Mapping):
                raise ValueError(
                    f"{text} is a config section: give it a mapping of {SECTIONS[text].__name__} "
                    f"fields (field: value), got {value!r}"
                )
            for sub, sub_value in value.items():
                place(text, sub, sub_value, f"{text}.{sub}")
        elif tail and head in SECTIONS:
            place(head, tail, value, text)
        elif text in FIELD_SECTIONS:
            place(FIELD_SECTIONS[text], text, value, text)
        else:
            unknown.setdefault(None, []).append(text)
    if unknown:
        raise _unknown_fields(unknown)
    nested: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for name, (section, _, value) in placed.items():
        nested[section][name] = _coerce(name, value)
    return nested


def _unknown_fields(unknown: Mapping[str | None, list[str]]) -> ValueError:
    """One message for every unknown key: the valid names of its scope, and where it belongs."""
    parts = []
    for section, names in unknown.items():
        shown = sorted(names) if section is None else [f"{section}.{n}" for n in sorted(names)]
        valid = (
            f"valid fields: {', '.join(sorted(FIELD_SECTIONS))} (flat, or nested under the "
            f"sections {', '.join(SECTIONS)})"
            if section is None
            else f"valid {section} fields: "
            + ", ".join(sorted(n for n, s in FIELD_SECTIONS.items() if s == section))
        )
        moved = [
            f"{n} belongs to {FIELD_SECTIONS[n]}" for n in sorted(names) if n in FIELD_SECTIONS
        ]
        parts.append(
            f"unknown config field(s) {', '.join(shown)}; {valid}"
            + (f" ({'; '.join(moved)})" if moved else "")
        )
    return ValueError(". ".join(parts))


# ----------------------------------------------------------------------------- helpers
def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _at_least(section: Any, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(section, name) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {getattr(section, name)}")


def _validate_field_types(section: Any) -> None:
    """Checks every field gets from its annotation (new fields and sections included).

    A field whose type has no ``| None`` must not be null (YAML ``steps: null``). A float
    field must hold a real, finite number: NaN and infinity make no sense as a rate, width,
    temperature or timeout (``reward_timeout_s: inf`` would never kill a hung grader). A
    field where infinity is meaningful opts out with ``_f(..., allow_inf=True)``.
    """
    hints = _hints(type(section))
    for f in fields(section):
        value = getattr(section, f.name)
        base = _base_type(hints[f.name])
        if value is None:
            if not _is_optional(hints[f.name]):
                raise ValueError(
                    f"{f.name} must not be null; give {_TYPE_WORDS.get(base, base.__name__)} "
                    f"or leave it out for the default ({_default(f)!r})"
                )
        elif base is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if math.isnan(value) or (math.isinf(value) and not f.metadata.get("allow_inf")):
                raise ValueError(f"{f.name} must be a finite number, got {value}")


def _default(f: Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def _first_line(cls: type) -> str:
    return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_METAVARS = {int: "INT", float: "FLOAT", str: "STR"}

# A hub repo id: ``name`` or ``namespace/name`` (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _looks_like_path(value: str) -> bool:
    """``--model`` meant as a local path (./x, ../x, ~/x, /x, a/b/c), not a hub id (org/name)."""
    if value.startswith((".", "~")) or os.path.isabs(value) or value.startswith("/"):
        return True
    if os.sep in value or (os.altsep and os.altsep in value) or "/" in value:
        return not _HUB_ID.fullmatch(value)
    return False


def _bad_byte(raw: bytes, exc: UnicodeDecodeError) -> str:
    """Where a UTF-8 decode failed, as an editor shows it: byte, line, column."""
    line = raw.count(b"\n", 0, exc.start) + 1
    column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
    return (
        f"byte 0x{raw[exc.start]:02x} on line {line}, column {column} is not valid UTF-8; "
        "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def _yaml_error(exc: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: position (1-based) and the parser's reason."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    reason = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if mark is None or reason is None:
        return "invalid YAML: " + " ".join(str(exc).split())
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {reason}"


def _divisors_hint(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _cli_caster(name: str, base: type) -> Any:
    def cast(text: str) -> Any:
        if text.lower() in ("none", "null", ""):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--{name} expects {base.__name__}, got {text!r}"
            ) from None

    return cast


def _coerce(name: str, value: Any) -> Any:
    """Type-check a file/dict value against the field's annotation, naming the field."""
    base = _base_type(_hints(SECTIONS[FIELD_SECTIONS[name]])[name])
    if value is None:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads 1e-4 and 5E3 as strings: a float field takes them as numbers.
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if base is bool and not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if base is float and not isinstance(value, float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if base is str and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value
