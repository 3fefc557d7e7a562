"""Everything a training run is built from, each from its own section of the :class:`TrainConfig`.

The policy and its DeepSpeed engine, the tokenizer, the training and held-out data (with the
start-up check of the golds), the rollout engine (through the rollout registry) and the
reward pool. The trainer calls these once at start-up; tests call them alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from strace_ds import deepspeed_config
from strace_ds import distributed as dist_utils
from strace_ds.data.types import PromptDataset

if TYPE_CHECKING:
    from strace_ds.config import (
        DataConfig,
        EvalConfig,
        ObjectiveConfig,
        OptimConfig,
        RewardConfig,
        RolloutConfig,
    )
    from strace_ds.train.layout import BatchLayout

Log = Callable[[str], None]

__all__ = [
    "PolicyEngine",
    "build_policy_engine",
    "build_reference_engine",
    "build_reward_pool",
    "build_rollout",
    "check_golds",
    "load_eval_data",
    "load_tokenizer",
    "load_train_data",
    "local_device",
    "resolve_model",
    "run_instruction",
]


def _quiet(msg: str) -> None:
    pass


def resolve_model(data: DataConfig, log: Log = _quiet) -> str:
    """``--model``, or the tiny policy shipped with the package for a generated ``--dataset``
    (the arithmetic one otherwise): the same weights on every machine."""
    if data.model:
        return data.model
    from strace_ds.data.tasks import GENERATED_TASKS, generated_task

    task = generated_task(data.dataset)
    path = task.policy_dir(data.dataset) if task else GENERATED_TASKS["synthetic"].policy_dir("")
    log(f"policy: embedded tiny Qwen3 at {path}")
    return str(path)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def model_context_of(model_path: str) -> int | None:
    """Positions the policy at ``model_path`` attends over (its config's
    ``max_position_embeddings``), None when its config does not say."""
    from transformers import AutoConfig

    from strace_ds.data.prompts import model_context

    return model_context(AutoConfig.from_pretrained(model_path))


def run_instruction(data: DataConfig) -> str | None:
    """The text appended to each question: ``--instruction``, nothing for a generated task
    (its prompts end with theirs), else ``build_prompt_ids``' default (``None``)."""
    from strace_ds.data.tasks import generated_task

    if data.instruction is not None:
        return data.instruction
    if generated_task(data.dataset) is not None:
        return ""
    return None


def load_train_data(
    data: DataConfig, seed: int, max_bad_gold_frac: float, rank: int = 0, world: int = 1,
    log: Log = _quiet,
) -> PromptDataset:  # fmt: skip
    """The training prompts of ``data`` (a generated task drawn with ``seed``), their golds
    checked (:func:`check_golds`, ``max_bad_gold_frac`` of the rewards section)."""
    from strace_ds.data.tasks import generated_dataset, generated_task

    if generated_task(data.dataset) is not None:
        prompts = generated_dataset(data.dataset, "train", data.dataset_size, seed)
    else:
        from strace_ds.data.loading import load_prompt_dataset

        prompts = load_prompt_dataset(
            data.dataset,
            split=data.dataset_split,
            prompt_column=data.prompt_column,
            answer_column=data.answer_column,
            subset=data.dataset_subset,
        )
    log(f"data: {len(prompts)} prompts from {prompts.source} ({prompts.skipped} rows skipped)")
    check_golds(prompts, max_bad_gold_frac, rank, world, log)
    return prompts


def check_golds(
    data: PromptDataset, max_bad_gold_frac: float, rank: int = 0, world: int = 1,
    log: Log = _quiet,
) -> None:  # fmt: skip
    """Parse every distinct gold as the grader does (the ranks share the work); report the
    unparseable ones, and abort when more than ``max_bad_gold_frac`` of the prompts have
    one: each of their answers would be a grading error, reward 0 and no gradient."""
    from strace_ds.data.loading import unparseable_golds

    t0 = time.perf_counter()
    golds = list(dict.fromkeys(ex.answer for ex in data.examples))
    mine = unparseable_golds(golds[rank::world])
    bad = {g for part in dist_utils.all_gather_objects(mine) for g in part}
    if not bad:
        return
    rows = [i for i, ex in enumerate(data.examples) if ex.answer in bad]
    frac = len(rows) / len(data)
    first = data.examples[rows[0]]
    where = f"row {first.meta.get('row', rows[0])}"
    summary = (
        f"{len(rows)} of {len(data)} training golds ({100 * frac:.1f}%) cannot be parsed by "
        f"math-verify, e.g. {where}: {first.answer[:80]!r} ({len(bad)} distinct; checked in "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    if frac > max_bad_gold_frac:
        raise ValueError(
            f"data: {summary}, more than max_bad_gold_frac={max_bad_gold_frac}. "
            "Every answer to those prompts is a grading error (reward 0, no gradient). Check "
            "--answer_column (the answer, or a solution with \\boxed{}), write golds as "
            "LaTeX (e.g. \\frac{1}{2}), or raise --max_bad_gold_frac to train anyway"
        )
    log(f"data: {summary}; their answers will grade as errors (reward 0)")


def load_eval_data(evaluation: EvalConfig, dataset: str, seed: int) -> PromptDataset | None:
    """The held-out problems: ``eval_dataset``, else the held-out split of a generated
    training ``dataset`` (drawn with ``seed``); None without one or with ``eval_every < 0``."""
    if evaluation.eval_every < 0:
        return None
    from strace_ds.data.tasks import generated_dataset, generated_task

    name = evaluation.eval_dataset or (dataset if generated_task(dataset) else None)
    if name is None:
        return None
    if generated_task(name) is not None:
        return generated_dataset(name, "test", evaluation.eval_size, seed)
    from strace_ds.evaluation import load_benchmark

    data = load_benchmark(name)
    data.examples = data.examples[: evaluation.eval_size]
    return data


def local_device() -> str:
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    return "cpu" if name == "cpu" else f"{name}:{dist_utils.local_rank_from_env()}"


def build_rollout(
    rollouts: RolloutConfig, run_dir: Path, model_path: str, tokenizer: Any, is_main: bool
) -> Any:
    """The run's rollout engine, by ``--rollout`` name (:data:`strace_ds.rollout.RUN_BUILDERS`);
    an engine that keeps files (SGLang's weight versions) keeps them under ``run_dir``."""
    from strace_ds.rollout import build_run_rollout

    return build_run_rollout(rollouts, run_dir, model_path, tokenizer, is_main,
                             device=local_device())  # fmt: skip


def build_reward_pool(rewards: RewardConfig, spec: str | None = None) -> Any:
    """The grading worker pool for ``--reward`` (or ``spec``); user functions are imported
    now, so a missing one is a start-up error naming it."""
    from strace_ds.rewards import RewardPool
    from strace_ds.rewards.registry import with_verifier

    # reward/accuracy is math-verify's verdict on the gold whatever --reward holds.
    return RewardPool(
        num_workers=rewards.reward_workers,
        timeout_s=rewards.reward_timeout_s,
        rewards=with_verifier(spec or rewards.reward),
        remote_timeout_s=rewards.remote_reward_timeout_s,
    )


@dataclass
class PolicyEngine:
    """The DeepSpeed engine of the policy and what the run needs to know about it."""

    engine: Any
    ds_config: dict[str, Any]
    zero3: bool
    on_cpu: bool
    hf_ds_config: Any = None  # kept alive: transformers' zero.Init follows it while it exists
    lora_scaling: float | None = None  # alpha / r with --lora_rank > 0: merge before syncing


def _load_model(model_path: str, dtype: torch.dtype) -> tuple[Any, str | None]:
    """The causal LM at ``model_path`` with dropout off and no KV cache, and the line that
    announces the dropout it turned off (None when there was none).

    Dropout off (strace_ds.train.dropout): old log-probs are scored in eval mode, updates in train
    mode; with dropout the two would be different policies.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from strace_ds.train import dropout

    model_config = AutoConfig.from_pretrained(model_path)
    turned_off = dropout.disable_dropout(model_config)
    model = AutoModelForCausalLM.from_pretrained(model_path, config=model_config, dtype=dtype)
    line = dropout.describe(turned_off, dropout.disable_dropout_modules(model))
    model.config.use_cache = False
    return model, line


def build_policy_engine(
    optim: OptimConfig, ds_config_path: str, layout: BatchLayout, model_path: str,
    log: Log = _quiet,
) -> PolicyEngine:  # fmt: skip
    """Load the policy (partitioned under ZeRO-3, dropout off) into a DeepSpeed engine with
    the run's optimizer and learning-rate schedule; ``layout`` sizes its micro-batches and
    gradient accumulation (``layout.world`` ranks)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    from strace_ds.train import lr_schedule

    on_cpu = get_accelerator().device_name() == "cpu"
    micro, accum, world = layout.micro, layout.accumulation, layout.world
    ds_config, notes = deepspeed_config.resolve_ds_config(
        deepspeed_config.load_ds_config(ds_config_path),
        micro_batch=micro,
        grad_accum=accum,
        world_size=world,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        grad_clip=optim.grad_clip,
        on_cpu=on_cpu,
    )
    for note in notes:
        log(note)
    # The updater calls engine.step() once per mini-batch, after however many micro-batches
    # the token budget made: DeepSpeed must not count micro-steps to find the boundary.
    ds_config["managed_gradient_accumulation"] = False
    zero3 = deepspeed_config.zero_stage(ds_config) == 3
    dtype = torch.float32
    if ds_config.get("bf16", {}).get("enabled"):
        dtype = torch.bfloat16
    elif ds_config.get("fp16", {}).get("enabled"):
        dtype = torch.float16
    hf_ds_config = None
    if zero3:
        from transformers.integrations import HfDeepSpeedConfig

        # Keeps transformers' zero.Init on while loading: weights arrive partitioned.
        hf_ds_config = HfDeepSpeedConfig(ds_config)
    model, line = _load_model(model_path, dtype)
    if line:
        log(line)
    lora_scaling = None
    if optim.lora_rank > 0:
        from strace_ds.model.lora import inject_lora

        inject_lora(model, optim.lora_rank, optim.lora_alpha, optim.lora_target_modules)
        lora_scaling = optim.lora_alpha / optim.lora_rank
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(f"lora: rank {optim.lora_rank}, alpha {optim.lora_alpha} on "
            f"{optim.lora_target_modules}: {trainable} trainable parameters")  # fmt: skip
    # The lr schedule is ours (strace_ds.train.lr_schedule), one step per optimizer update.
    schedule = {
        "warmup_steps": optim.warmup_steps,
        "total_updates": optim.steps * optim.mini_batches * optim.epochs,
        "schedule": optim.lr_schedule,
        "min_lr_ratio": optim.min_lr_ratio,
    }
    engine, *_ = deepspeed.initialize(
        model=model,
        # Only what trains gets optimizer state (all of it without LoRA).
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=lr_schedule.scheduler_factory(**schedule),
    )
    log(lr_schedule.describe(optim.lr, **schedule))
    log(
        f"deepspeed: ZeRO stage {deepspeed_config.zero_stage(ds_config)}, {dtype}, "
        f"micro-batch {micro} x {accum} accumulation x {world} rank(s)"
    )
    return PolicyEngine(engine, ds_config, zero3, on_cpu, hf_ds_config, lora_scaling)


def build_reference_engine(
    objective: ObjectiveConfig, model_path: str, policy: PolicyEngine, log: Log = _quiet
) -> Any:
    """The frozen reference policy (``--kl_coef > 0``): the starting model in a DeepSpeed
    engine without optimizer, partitioned like the policy under ZeRO-3 (offloaded when the
    policy's parameters are), in eval mode. No gradient, no optimizer state."""
    import deepspeed

    ds_config = {
        k: v
        for k, v in policy.ds_config.items()
        if k not in ("optimizer", "scheduler", "managed_gradient_accumulation")
    }
    zero = dict(ds_config.get("zero_optimization", {}))
    if zero.get("stage", 0) != 3:
        zero = {"stage": 0}  # replicated: ZeRO-1/2 only partition optimizer state and grads
    zero.pop("offload_optimizer", None)
    ds_config["zero_optimization"] = zero
    dtype = next(policy.engine.module.parameters()).dtype
    # policy.hf_ds_config is alive: under ZeRO-3 the weights load partitioned (zero.Init).
    model, _ = _load_model(model_path, dtype)
    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    engine.eval()
    log(
        f"reference policy: {model_path}, frozen (ZeRO stage {zero.get('stage', 0)}), "
        f"KL {objective.kl_estimator} x {objective.kl_coef} in the {objective.kl_in}"
    )
    return engine
