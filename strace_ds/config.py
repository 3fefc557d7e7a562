"""One typed configuration for a training run, validated at start-up.

The CLI (``scripts/train.py``), YAML/JSON files (``--config run.yaml``) and notebooks all build
the same :class:`TrainConfig`. Every field carries a one-line ``help`` that is also the
CLI's help text; validation names the field and the fix.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from strace_ds.losses import (
    BEHAVIOUR_CAP,
    BEHAVIOUR_CORRECTIONS,
    BEHAVIOUR_MODES,
    KL_ESTIMATORS,
    KL_IN,
    LOSS_AGGREGATIONS,
    PRESETS,
    TraceConfig,
)
from strace_ds.lr_schedule import LR_SCHEDULES
from strace_ds.rollout import ROLLOUT_ENGINES

ADVANTAGE_METHODS = ("grpo", "dr_grpo", "rloo")
OVERLONG_MODES = ("none", "mask", "soft")
OLD_LOGPROBS = ("trainer", "rollout")


def _f(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults train the embedded tiny policy on the synthetic task."""

    # --- policy and data -------------------------------------------------------------------
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
    eval_dataset: str | None = _f(
        None,
        "held-out set: 'synthetic' (default with the tiny policy), "
        "a benchmark name (math500, aime24, ...) or a dataset path",
    )
    eval_size: int = _f(200, "number of held-out problems evaluated")
    eval_every: int = _f(0, "evaluate every N steps (0 = only at start and end; -1 = never)")
    eval_k: int = _f(4, "samples per held-out problem (avg@k, pass@k)")
    eval_temperature: float = _f(1.0, "sampling temperature for evaluation (0 = greedy)")
    # --- rollouts --------------------------------------------------------------------------
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
    # --- objective -------------------------------------------------------------------------
    loss: str = _f("s_trace", "loss preset: " + ", ".join(PRESETS))
    lam: float | None = _f(None, "override the preset's trace decay lambda")
    clip_low: float | None = _f(None, "override the preset's lower clip width")
    clip_high: float | None = _f(None, "override the preset's upper clip width")
    entropy_top_quantile: float | None = _f(None, "override the preset's entropy selection q")
    loss_agg: str | None = _f(
        None, "override the preset's aggregation: " + ", ".join(LOSS_AGGREGATIONS)
    )
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
    # --- optimisation ----------------------------------------------------------------------
    steps: int = _f(30, "training steps (rollout + updates + weight sync)")
    mini_batches: int = _f(2, "policy updates per step, each on 1/mini_batches of the rollouts")
    epochs: int = _f(
        1,
        "passes over each step's rollouts (TRL num_iterations, verl ppo_epochs); each pass makes "
        "mini_batches updates, the mini-batches re-shuffled after the first pass",
    )
    max_staleness: int = _f(
        0,
        "asynchronous rollouts: answers of step t come from policy version max(0, t-1-K) and are "
        "generated while earlier steps train (0 = synchronous, on-policy up to the mini-batches)",
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
    # --- rewards ---------------------------------------------------------------------------
    reward: str = _f(
        "math_verify",
        "rewards as NAME[:WEIGHT],...: math_verify, format (a \\boxed{} answer present), "
        "synthetic, or package.module:function (response, gold, example dict) -> float; "
        "weighted sum, each logged as reward/<name> (README, 'Rewards')",
    )
    reward_workers: int = _f(2, "grading worker processes per rank")
    reward_timeout_s: float = _f(10.0, "hard per-answer grading timeout (killed, scored 0)")
    # --- infrastructure --------------------------------------------------------------------
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
    # --- reliability -----------------------------------------------------------------------
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

    def __post_init__(self) -> None:
        self.validate()

    # --- derived ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.run_name or f"{self.loss}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def trace_config(self) -> TraceConfig:
        """The loss preset with this run's overrides applied."""
        overrides = {
            k: getattr(self, k)
            for k in ("lam", "clip_low", "clip_high", "entropy_top_quantile", "loss_agg")
            if getattr(self, k) is not None
        }
        return TraceConfig.preset(self.loss, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # --- validation -------------------------------------------------------------------------
    def validate(self, world_size: int | None = None) -> None:
        """Raise ``ValueError`` naming the first bad field; ``world_size`` adds divisibility."""
        self._validate_field_types()
        _choice("loss", self.loss, tuple(PRESETS))
        _choice("advantage", self.advantage, ADVANTAGE_METHODS)
        _choice("overlong", self.overlong, OVERLONG_MODES)
        _choice("rollout", self.rollout, ROLLOUT_ENGINES)
        _choice("sglang_sync", self.sglang_sync, ("disk", "tensor"))
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("old_logprobs", self.old_logprobs, OLD_LOGPROBS)
        _choice("behaviour_correction", self.behaviour_correction, BEHAVIOUR_CORRECTIONS)
        _choice("behaviour_mode", self.behaviour_mode, BEHAVIOUR_MODES)
        _choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _choice("kl_in", self.kl_in, KL_IN)
        if self.max_tokens_per_micro_batch is not None and self.max_tokens_per_micro_batch < 0:
            raise ValueError(
                f"max_tokens_per_micro_batch must be >= 0 (0 = fixed micro_batch_size rows) or "
                f"empty for auto, got {self.max_tokens_per_micro_batch}"
            )
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
        if self.loss_agg is not None:
            _choice("loss_agg", self.loss_agg, LOSS_AGGREGATIONS)
        for name in (
            "prompts_per_step",
            "group_size",
            "max_new_tokens",
            "steps",
            "mini_batches",
            "epochs",
            "max_sampling_draws",
            "micro_batch_size",
            "reward_workers",
            "eval_size",
            "eval_k",
            "rollout_batch_size",
            "keep_last",
            "dataset_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "save_every",
            "warmup_steps",
            "image_every",
            "sample_every",
            "overlong_buffer",
            "logprob_chunk_size",
            "max_staleness",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.group_size < 2 and self.advantage in ("grpo", "rloo"):
            raise ValueError(
                f"group_size must be >= 2 for advantage={self.advantage!r} (a group needs a "
                f"baseline), got {self.group_size}"
            )
        for name in ("lr", "reward_timeout_s", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(
                f"stop_after must be >= 1 (a step number; steps count from 1) or null, "
                f"got {self.stop_after}"
            )
        model = self.model
        if model and _looks_like_path(model) and not Path(model).expanduser().exists():
            raise ValueError(
                f"model: local path {model!r} does not exist (working directory "
                f"{os.getcwd()}); pass an existing model directory, a hub id such as "
                "Qwen/Qwen3-1.7B, or leave --model out for the embedded tiny policy"
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.min_lr_ratio and self.lr_schedule == "constant":
            raise ValueError(
                f"min_lr_ratio ({self.min_lr_ratio}) has no effect with lr_schedule='constant'; "
                "add --lr_schedule linear (or cosine), or drop min_lr_ratio"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for RL rollouts, got {self.temperature}")
        if self.eval_temperature < 0:
            raise ValueError(f"eval_temperature must be >= 0, got {self.eval_temperature}")
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
        if self.overlong == "soft" and self.overlong_buffer >= self.max_new_tokens:
            raise ValueError(
                f"overlong_buffer ({self.overlong_buffer}) must be < max_new_tokens "
                f"({self.max_new_tokens})"
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
        self.trace_config()  # a bad override names its field
        if world_size is not None:
            self._validate_sizes(world_size)

    def _validate_field_types(self) -> None:
        """Checks every field gets from its annotation (new fields included).

        A field whose type has no ``| None`` must not be null (YAML ``steps: null``). A float
        field must hold a real, finite number: NaN and infinity make no sense as a rate, width,
        temperature or timeout (``reward_timeout_s: inf`` would never kill a hung grader). A
        field where infinity is meaningful opts out with ``_f(..., allow_inf=True)``.
        """
        for f in fields(self):
            value = getattr(self, f.name)
            base = _base_type(f.type)
            if value is None:
                if not _is_optional(f.type):
                    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
                    raise ValueError(
                        f"{f.name} must not be null; give {_TYPE_WORDS.get(base, base.__name__)} "
                        f"or leave it out for the default ({default!r})"
                    )
            elif base is float:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{f.name} must be a number, got {value!r}")
                if math.isnan(value) or (math.isinf(value) and not f.metadata.get("allow_inf")):
                    raise ValueError(f"{f.name} must be a finite number, got {value}")

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
        """Load a YAML or JSON file (keys = field names), then apply ``overrides``."""
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
        return cls.from_dict({**data, **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)  # YAML keys may be numbers
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(unknown)}; "
                f"valid fields: {', '.join(sorted(known))}"
            )
        return cls(**{k: _coerce(k, v) for k, v in data.items()})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--flag`` per field (``--field_name`` and ``--field-name`` both accepted)."""
        for f in fields(cls):
            flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
            base = _base_type(f.type)
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            help_text = f"{f.metadata.get('help', '')} (default: {default})"
            if base is bool:
                parser.add_argument(
                    *flags,
                    dest=f.name,
                    type=_parse_bool,
                    default=argparse.SUPPRESS,
                    metavar="true|false",
                    help=help_text,
                )
            else:
                parser.add_argument(
                    *flags,
                    dest=f.name,
                    type=_cli_caster(f.name, base),
                    default=argparse.SUPPRESS,
                    help=help_text,
                )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """Build from parsed CLI args: ``--config FILE`` first, then the flags given."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        if getattr(args, "config", None):
            return cls.from_file(args.config, **given)
        return cls.from_dict(given)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}

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


def _base_type(annotation: Any) -> type:
    hint = _field_hints()[annotation] if isinstance(annotation, str) else annotation
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _is_optional(annotation: Any) -> bool:
    """True when the field's annotation admits None (``X | None``)."""
    hint = _field_hints()[annotation] if isinstance(annotation, str) else annotation
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return union and type(None) in typing.get_args(hint)


@functools.cache
def _field_hints() -> dict[str, Any]:
    """Resolved annotations of TrainConfig, keyed by their source text."""
    resolved = typing.get_type_hints(TrainConfig)
    return {f.type: resolved[f.name] for f in fields(TrainConfig) if isinstance(f.type, str)}


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
    base = _base_type(typing.get_type_hints(TrainConfig)[name])
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
