"""The RL trainer: rollouts, rewards, group advantages, trace-loss updates on DeepSpeed ZeRO-3.

One step::

    prompts -> RolloutEngine.generate (G answers each, sampling log-probs)
            -> RewardPool (math-verify in worker processes, hard timeout)
            -> group advantages              -> old log-probs (trainer recompute)
            -> mini_batches x [forward (ZeRO-3) -> log-probs + entropy -> policy_loss
                               -> engine.backward / engine.step]
            -> weight sync to the rollout engine -> TensorBoard, checkpoint

Data parallelism: each rank samples, grades and trains on its share of the step's prompts;
DeepSpeed averages gradients, and the loss normaliser is global (all-reduced) so that the
update equals the single-process one.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import socket
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from strace_ds import checkpoint as ckpt
from strace_ds import distributed as dist_utils
from strace_ds.advantages import group_advantages
from strace_ds.config import TrainConfig
from strace_ds.data.types import PromptDataset
from strace_ds.losses import (
    METRIC_NAMES,
    entropy_threshold,
    loss_denominator,
    policy_loss,
    select_tokens,
    token_credit,
)
from strace_ds.monitor import Monitor, credit_figure
from strace_ds.publish import publish_dir
from strace_ds.rollout import SamplingParams
from strace_ds.rollout_batch import RolloutBatch, answer_logprobs, collate_rollouts

MISMATCH_THRESHOLD = 0.1
"""|rollout log-prob - trainer log-prob| above which a token counts as mismatched."""


class RunAbortedError(RuntimeError):
    """The run stopped itself because going on would waste it (e.g. answers that cannot be
    graded); a checkpoint of the last step was saved first."""


@dataclass
class StepBatch:
    """One rank's rollouts of one step, with everything the updates need."""

    batch: RolloutBatch
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    loss_rows: torch.Tensor  # [N] bool, rows that enter the loss (overlong/filter masks)
    old_logprobs: torch.Tensor  # [N, R]
    texts: list[str]
    golds: list[str]
    selected: torch.Tensor | None = None  # [N, R] bool, the step's selection (S-trace, 80/20)
    entropy_threshold: float = math.nan  # its tau, over all ranks' loss tokens

    @property
    def loss_tokens(self) -> torch.Tensor:
        """``[N, R]`` bool: the valid answer tokens of the rows that enter the loss."""
        return self.batch.response_mask & self.loss_rows.unsqueeze(-1)


def init_distributed() -> None:
    """Start torch.distributed through DeepSpeed; a plain ``python`` run becomes one rank."""
    import deepspeed

    # DeepSpeed still calls collectives that torch 2.13 renamed; the notice is not ours to fix.
    warnings.filterwarnings(
        "ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning
    )
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=_backend(), verbose=False)


def _backend() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().communication_backend_name()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_seed(seed: int, step: int, rank: int, purpose: str) -> int:
    """A seed that depends only on (run seed, step, rank, purpose): resume-proof sampling."""
    digest = hashlib.sha256(f"{seed}/{step}/{rank}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Trainer:
    """Builds every component from a :class:`TrainConfig` and runs the loop."""

    def __init__(self, config: TrainConfig) -> None:
        init_distributed()
        self.cfg = config
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        config.validate(world_size=self.world)
        self.is_main = self.rank == 0
        self.trace_cfg = config.trace_config()
        _seed_everything(config.seed)
        self._log(f"strace_ds: {self.world} rank(s), loss={config.loss} {self.trace_cfg}")
        self.model_path = self._resolve_model()
        self.tokenizer = _load_tokenizer(self.model_path)
        self.train_data = self._load_train_data()
        self.prompt_ids = [self._encode(ex.prompt) for ex in self.train_data.examples]
        self.rollout = self._build_rollout()  # before HfDeepSpeedConfig: a plain copy
        self.engine, self.on_cpu = self._build_engine()
        self.reward_pool = self._build_reward_pool()
        self.monitor = Monitor(Path(config.log_dir) / config.name, enabled=self.is_main)
        self.ckpt_dir = config.run_dir / "checkpoints"
        self.state = ckpt.TrainerState()
        self.eval_data = self._load_eval_data()

    # ------------------------------------------------------------------ construction
    def _log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg)

    def _resolve_model(self) -> str:
        if self.cfg.model:
            return self.cfg.model
        from strace_ds.tiny import default_policy_dir

        path = default_policy_dir()  # shipped with the package: the same on every machine
        self._log(f"policy: embedded tiny Qwen3 at {path}")
        return str(path)

    def _encode(self, question: str) -> list[int]:
        from strace_ds.data.prompts import build_prompt_ids

        return build_prompt_ids(self.tokenizer, question, self.instruction)

    @property
    def instruction(self) -> str | None:
        if self.cfg.instruction is not None:
            return self.cfg.instruction
        if self.cfg.dataset == "synthetic":
            return ""  # the synthetic prompts already end with their instruction
        return None  # build_prompt_ids' default: "Please reason step by step, ... \boxed{}."

    def _load_train_data(self) -> PromptDataset:
        cfg = self.cfg
        if cfg.dataset == "synthetic":
            from strace_ds.data.synthetic import arithmetic_dataset

            data = arithmetic_dataset("train", size=cfg.dataset_size, seed=cfg.seed)
        else:
            from strace_ds.data.loading import load_prompt_dataset

            data = load_prompt_dataset(
                cfg.dataset,
                split=cfg.dataset_split,
                prompt_column=cfg.prompt_column,
                answer_column=cfg.answer_column,
                subset=cfg.dataset_subset,
            )
        self._log(f"data: {len(data)} prompts from {data.source} ({data.skipped} rows skipped)")
        self._check_golds(data)
        return data

    def _check_golds(self, data: PromptDataset) -> None:
        """Parse every distinct gold as the grader does (the ranks share the work); report the
        unparseable ones, and abort when more than ``max_bad_gold_frac`` of the prompts have
        one: each of their answers would be a grading error, reward 0 and no gradient."""
        from strace_ds.data.loading import unparseable_golds

        t0 = time.perf_counter()
        golds = list(dict.fromkeys(ex.answer for ex in data.examples))
        mine = unparseable_golds(golds[self.rank :: self.world])
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
        if frac > self.cfg.max_bad_gold_frac:
            raise ValueError(
                f"data: {summary}, more than max_bad_gold_frac={self.cfg.max_bad_gold_frac}. "
                "Every answer to those prompts is a grading error (reward 0, no gradient). Check "
                "--answer_column (the answer, or a solution with \\boxed{}), write golds as "
                "LaTeX (e.g. \\frac{1}{2}), or raise --max_bad_gold_frac to train anyway"
            )
        self._log(f"data: {summary}; their answers will grade as errors (reward 0)")

    def _load_eval_data(self) -> PromptDataset | None:
        cfg = self.cfg
        if cfg.eval_every < 0:
            return None
        name = cfg.eval_dataset or ("synthetic" if cfg.dataset == "synthetic" else None)
        if name is None:
            return None
        if name == "synthetic":
            from strace_ds.data.synthetic import arithmetic_dataset

            return arithmetic_dataset("test", size=cfg.eval_size, seed=cfg.seed)
        from strace_ds.evaluation import load_benchmark

        data = load_benchmark(name)
        data.examples = data.examples[: cfg.eval_size]
        return data

    def _build_rollout(self) -> Any:
        from strace_ds.rollout import build_rollout_engine

        cfg = self.cfg
        if cfg.rollout == "hf":
            device = _local_device()
            return build_rollout_engine(
                "hf",
                model=self.model_path,
                tokenizer=self.tokenizer,
                device=device,
                max_batch_size=cfg.rollout_batch_size,
            )
        from strace_ds.rollout.sglang_rollout import build_sglang_rollout

        return build_sglang_rollout(cfg, self.model_path, is_main=self.is_main)

    def _build_engine(self) -> tuple[Any, bool]:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        from transformers import AutoConfig, AutoModelForCausalLM

        from strace_ds import dropout, lr_schedule

        cfg = self.cfg
        on_cpu = get_accelerator().device_name() == "cpu"
        micro, accum = cfg.micro_batches_per_update(self.world)
        ds_config, notes = dist_utils.resolve_ds_config(
            dist_utils.load_ds_config(cfg.ds_config),
            micro_batch=micro,
            grad_accum=accum,
            world_size=self.world,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            grad_clip=cfg.grad_clip,
            on_cpu=on_cpu,
        )
        for note in notes:
            self._log(note)
        self.zero3 = dist_utils.zero_stage(ds_config) == 3
        dtype = torch.float32
        if ds_config.get("bf16", {}).get("enabled"):
            dtype = torch.bfloat16
        elif ds_config.get("fp16", {}).get("enabled"):
            dtype = torch.float16
        if self.zero3:
            from transformers.integrations import HfDeepSpeedConfig

            # Keeps transformers' zero.Init on while loading: weights arrive partitioned.
            self._hf_ds_config = HfDeepSpeedConfig(ds_config)
        # Dropout off (strace_ds.dropout): old log-probs are scored in eval mode, updates in
        # train mode; with dropout the two would be different policies.
        model_config = AutoConfig.from_pretrained(self.model_path)
        turned_off = dropout.disable_dropout(model_config)
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, config=model_config, dtype=dtype
        )
        line = dropout.describe(turned_off, dropout.disable_dropout_modules(model))
        if line:
            self._log(line)
        model.config.use_cache = False
        # The lr schedule is ours (strace_ds.lr_schedule), one step per optimizer update.
        schedule = {
            "warmup_steps": cfg.warmup_steps,
            "total_updates": cfg.steps * cfg.mini_batches,
            "schedule": cfg.lr_schedule,
            "min_lr_ratio": cfg.min_lr_ratio,
        }
        engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=model.parameters(),
            config=ds_config,
            lr_scheduler=lr_schedule.scheduler_factory(**schedule),
        )
        self._log(lr_schedule.describe(cfg.lr, **schedule))
        self.ds_config = ds_config
        self._log(
            f"deepspeed: ZeRO stage {dist_utils.zero_stage(ds_config)}, {dtype}, "
            f"micro-batch {micro} x {accum} accumulation x {self.world} rank(s)"
        )
        return engine, on_cpu

    def _build_reward_pool(self) -> Any:
        from strace_ds.rewards import RewardPool

        return RewardPool(num_workers=self.cfg.reward_workers, timeout_s=self.cfg.reward_timeout_s)

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, float]:
        """Run (or resume) the configured number of steps; returns the last step's metrics."""
        cfg = self.cfg
        if cfg.resume:
            # Verified against its manifest; a broken ``latest`` falls back (and says so).
            found = ckpt.find_checkpoint(cfg.resume, self.ckpt_dir, log=self._log)
            if found is not None:
                self.state = ckpt.load_checkpoint(self.engine, found, verify=False)
                self._log(f"resumed from {found} at step {self.state.step}")
            else:
                self._log(f"resume=auto: no checkpoint in {self.ckpt_dir}, starting fresh")
            # Steps after the checkpoint's are re-run: TensorBoard drops their old points.
            self.monitor.resume_after(self.state.step if found is not None else -1)
        if self.state.step >= cfg.steps:
            # A relaunch of a finished run: saving again would only risk the last checkpoint.
            self._log(f"run {cfg.name} already finished at step {self.state.step} "
                      f"(steps={cfg.steps}): nothing to train")
            if cfg.export:
                from strace_ds.manifest import check_manifest

                problems = check_manifest(cfg.run_dir / "final")
                if problems:
                    self._log(f"export {cfg.run_dir / 'final'}: {'; '.join(problems)}; "
                              "exporting it again")
                    self.export(cfg.run_dir / "final")
            return next((h for h in reversed(self.state.history) if "reward/mean" in h), {})
        self.sync_weights(self.state.step)
        if self.state.step == 0 and self.eval_data is not None:
            self.evaluate(step=0, label="start")
        last: dict[str, float] = {}
        bar = tqdm(
            total=cfg.steps,
            initial=self.state.step,
            disable=not self.is_main,
            desc="train",
            dynamic_ncols=True,
        )
        while self.state.step < cfg.steps:
            step = self.state.step + 1
            last = self.train_step(step)
            self.state.step = step
            self.state.history.append(last)
            bar.update(1)
            bar.set_postfix(
                {
                    k.split("/")[-1]: f"{last[k]:.3g}"
                    for k in ("reward/mean", "policy/loss", "select/frac", "perf/step_s")
                    if k in last
                }
            )
            self._stop_on_grading_errors(bar)
            if cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < cfg.steps:
                self.evaluate(step=step, label=f"step {step}")
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                self.save()
            if cfg.stop_after is not None and step >= cfg.stop_after and step < cfg.steps:
                self.save()
                self._log(f"stop_after={cfg.stop_after}: stopping after a checkpoint")
                bar.close()
                return last
        bar.close()
        if self.eval_data is not None:
            self.evaluate(step=self.state.step, label="end")
        self.save()
        if cfg.export:
            self.export(cfg.run_dir / "final")
        self.monitor.flush()
        return last

    def _stop_on_grading_errors(self, bar: Any) -> None:
        """Save and raise :class:`RunAbortedError` when more than ``max_grading_error_frac`` of the
        answers failed to grade in each of the last ``grading_error_patience`` steps (counted
        from the history, so a resume continues the count). Every rank decides the same."""
        cfg = self.cfg
        fracs = grading_error_streak(
            self.state.history,
            rows=cfg.prompts_per_step * cfg.group_size,
            max_frac=cfg.max_grading_error_frac,
            patience=cfg.grading_error_patience,
        )
        if fracs is None:
            return
        self.save()
        bar.close()
        last = getattr(self, "_last_grading_error", None)
        raise RunAbortedError(
            f"stopping at step {self.state.step}: more than max_grading_error_frac="
            f"{cfg.max_grading_error_frac} of the answers failed to grade in "
            f"{cfg.grading_error_patience} consecutive steps (error fractions "
            f"{', '.join(f'{f:.2f}' for f in fracs)}), so the run trains on zero reward. "
            + (f"Last grading error: {last[:300]}. " if last else "")
            + f"A checkpoint of step {self.state.step} was saved; fix the golds or the grader "
            "and --resume auto (or raise --max_grading_error_frac / set "
            "--grading_error_patience 0)"
        )

    def prompts_for_step(self, step: int) -> list[int]:
        """Indices of this rank's prompts at ``step``: a seeded permutation, epoch by epoch.

        The step's prompts are split into ``mini_batches`` consecutive chunks, one per policy
        update, and each rank takes its slice of every chunk: global mini-batch j holds the
        same prompts whatever the number of ranks, so 1 and N ranks make the same updates.
        (When ``prompts_per_step`` is not a multiple of ``mini_batches x ranks`` each rank takes
        one contiguous slice and mini-batches depend on the rank count.)
        """
        cfg, n = self.cfg, len(self.prompt_ids)
        per_rank = cfg.prompts_per_step // self.world
        first = (step - 1) * cfg.prompts_per_step
        if cfg.prompts_per_step % (cfg.mini_batches * self.world) == 0:
            chunk = cfg.prompts_per_step // cfg.mini_batches
            share = chunk // self.world
            positions = [
                first + j * chunk + self.rank * share + i
                for j in range(cfg.mini_batches)
                for i in range(share)
            ]
        else:
            start = first + self.rank * per_rank
            positions = list(range(start, start + per_rank))
        out = []
        for pos in positions:
            epoch, offset = divmod(pos, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch))
            out.append(int(order[offset]))
        return out

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        t_start = time.perf_counter()
        timings: dict[str, float] = {}

        # 1. rollouts
        t0 = time.perf_counter()
        indices = self.prompts_for_step(step)
        prompts = [self.prompt_ids[i] for i in indices]
        sampling = SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=step_seed(cfg.seed, step, self.rank, "rollout"),
        )
        generation = self.rollout.generate(prompts, n=cfg.group_size, sampling=sampling)
        _check_version(generation.weight_version, step - 1)
        timings["perf/rollout_s"] = time.perf_counter() - t0

        # 2. rewards
        t0 = time.perf_counter()
        texts = self.tokenizer.batch_decode(generation.token_ids, skip_special_tokens=True)
        golds = [self.train_data[indices[i]].answer for i in generation.prompt_index]
        graded = self.reward_pool.score(texts, golds)
        self._last_grading_error = next((e for e in graded.errors if e), None)
        rewards = torch.tensor(graded.rewards, dtype=torch.float32)
        correct = rewards.clone()
        lengths = torch.tensor([len(t) for t in generation.token_ids], dtype=torch.float32)
        truncated = [r == "length" for r in generation.finish_reasons]
        from strace_ds.rewards import apply_overlong

        rewards, keep = apply_overlong(
            rewards, lengths, truncated, cfg.max_new_tokens, cfg.overlong, cfg.overlong_buffer
        )
        adv = group_advantages(rewards, cfg.group_size, method=cfg.advantage)
        loss_rows = keep.bool().clone()
        if cfg.filter_zero_variance:
            loss_rows &= ~adv.zero_variance_mask.repeat_interleave(cfg.group_size)
        timings["perf/reward_s"] = time.perf_counter() - t0

        # 3. old log-probs from the trainer (the rollout engine's are kept for the mismatch)
        t0 = time.perf_counter()
        batch = collate_rollouts(prompts, generation, self.tokenizer.pad_token_id)
        old, old_entropy = self._score(batch)
        sb = StepBatch(batch, rewards, adv.advantages.float(), loss_rows, old, texts, golds)
        sb.selected, sb.entropy_threshold = self._step_selection(sb, old_entropy)
        timings["perf/old_logprob_s"] = time.perf_counter() - t0

        # 4. policy updates
        t0 = time.perf_counter()
        loss_metrics, last_micro = self._update(sb)
        timings["perf/train_s"] = time.perf_counter() - t0

        # 5. weight sync
        t0 = time.perf_counter()
        self.sync_weights(step)
        timings["perf/sync_s"] = time.perf_counter() - t0
        timings["perf/step_s"] = time.perf_counter() - t_start

        metrics = self._step_metrics(
            sb,
            generation,
            graded,
            correct,
            lengths,
            truncated,
            adv.zero_variance_frac,
            loss_metrics,
            timings,
        )
        self._log_step(step, metrics, sb, last_micro)
        return metrics

    @torch.no_grad()
    def _score(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Old (proximal) log-probs ``[N, R]``, and entropies when the preset selects tokens."""
        micro, _ = self.cfg.micro_batches_per_update(self.world)
        with_entropy = self.trace_cfg.uses_entropy
        self.engine.eval()
        logps, entropies = [], []
        for lo in range(0, len(batch), micro):
            logp, entropy = answer_logprobs(
                self.engine,
                batch.rows(slice(lo, lo + micro)),
                self.cfg.temperature,
                self.cfg.logprob_chunk_size,
                with_entropy=with_entropy,
            )
            logps.append(logp.float().cpu())
            if entropy is not None:
                entropies.append(entropy.float().cpu())
        self.engine.train()
        return torch.cat(logps), (torch.cat(entropies) if entropies else None)

    def _step_selection(
        self, sb: StepBatch, entropy: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, float]:
        """The step's token selection: one entropy quantile over all ranks' loss tokens.

        The entropies are the scoring pass's (the proximal policy, before any update), so the
        selection is fixed for every mini- and micro-batch of the step and the gradient does
        not depend on ``micro_batch_size`` or the number of ranks (``docs/ALGORITHMS.md``,
        "Selection"). None when the preset selects nothing.
        """
        q = self.trace_cfg.entropy_top_quantile
        if q is None or entropy is None:
            return None, math.nan
        valid = sb.loss_tokens
        values = dist_utils.all_gather_cat(entropy[valid], device=self.engine.device)
        tau = entropy_threshold(values, q)
        selected, _ = select_tokens(valid, entropy, q, threshold=tau)
        return selected, tau

    def _update(self, sb: StepBatch) -> tuple[dict[str, list[float]], dict[str, Any]]:
        cfg, tc = self.cfg, self.trace_cfg
        micro, _ = cfg.micro_batches_per_update(self.world)
        N = len(sb.batch)
        mini = N // cfg.mini_batches
        collected: dict[str, list[float]] = defaultdict(list)
        last: dict[str, Any] = {}
        device = self.engine.device
        for lo_mini in range(0, N, mini):
            rows = slice(lo_mini, lo_mini + mini)
            normalizer = self._global_normalizer(sb, rows)
            lr = float(self.engine.get_lr()[0])  # before engine.step advances the schedule
            for lo in range(lo_mini, lo_mini + mini, micro):
                r = slice(lo, lo + micro)
                part = sb.batch.rows(r)
                logp, entropy = answer_logprobs(
                    self.engine, part, cfg.temperature, cfg.logprob_chunk_size, with_entropy=True
                )
                mask = sb.loss_tokens[r].to(device)
                selected = None if sb.selected is None else sb.selected[r].to(device)
                out = policy_loss(
                    logp,
                    sb.old_logprobs[r].to(device),
                    sb.advantages[r].to(device),
                    mask,
                    entropy=entropy,
                    config=tc,
                    max_len=cfg.max_new_tokens,
                    normalizer=normalizer,
                    selected=selected,
                )
                self.engine.backward(out.loss, scale_wrt_gas=False)
                self.engine.step()
                for k, v in out.metrics.items():
                    collected[k].append(v)
                collected["policy/loss"].append(out.loss.item() / self.world)
                last = {
                    "logp": logp.detach().cpu(),
                    "entropy": entropy.cpu(),
                    "rows": r,
                    "ratio": out.trace_ratio.cpu(),
                    "loss_mask": out.loss_mask.cpu(),
                    "mask": mask.cpu(),
                }
            collected["policy/grad_norm"].append(float(self.engine.get_global_grad_norm() or 0.0))
            collected["policy/lr"].append(lr)
        if sb.selected is not None:
            # The step's one selection: its threshold and exact share over all ranks.
            n_sel, n_valid = dist_utils.all_reduce_sum(
                [float(sb.selected.sum()), float(sb.loss_tokens.sum())]
            )
            collected["select/entropy_threshold"] = [sb.entropy_threshold]
            collected["select/frac"] = [n_sel / n_valid if n_valid else math.nan]
        return collected, last

    def _global_normalizer(self, sb: StepBatch, rows: slice) -> float:
        """Denominator of the mini-batch's loss over all ranks, divided by the world size.

        DeepSpeed averages gradients over ranks; dividing the global denominator by the world
        size makes the averaged gradient that of the global token (or sequence) mean. The
        count is :func:`loss_denominator`'s, over the same loss tokens ``policy_loss`` uses
        (the selected ones when the loss is on the selection only).
        """
        tc = self.trace_cfg
        mask = sb.loss_tokens[rows]
        if tc.loss_on_selected_only and sb.selected is not None:
            mask = mask & sb.selected[rows]
        local = loss_denominator(mask, tc.loss_agg, self.cfg.max_new_tokens, sb.loss_rows[rows])
        (total,) = dist_utils.all_reduce_sum([float(local)])
        return max(total, 1.0) / self.world

    # ------------------------------------------------------------------ metrics
    def _step_metrics(
        self,
        sb,
        generation,
        graded,
        correct,
        lengths,
        truncated,
        zero_var_frac,
        loss_metrics,
        timings,
    ) -> dict[str, float]:
        mask = sb.batch.response_mask
        diff = (sb.batch.rollout_logprobs - sb.old_logprobs).abs()[mask]
        n_tokens = float(mask.sum())
        local_sums = {
            "reward/mean": float(sb.rewards.sum()),
            "reward/accuracy": float(correct.sum()),
            "reward/timeouts": float(graded.num_timeouts),
            "reward/errors": float(graded.num_errors),
            "advantage/zero_variance_frac": zero_var_frac * len(sb.rewards),
            "response/length_mean": float(lengths.sum()),
            "response/truncated_frac": float(sum(truncated)),
            "rollout/logprob_diff_mean": float(diff.sum()),
            "rollout/logprob_diff_frac": float((diff > MISMATCH_THRESHOLD).sum()),
        }
        counts = {"rows": float(len(sb.rewards)), "tokens": n_tokens}
        keys = list(local_sums)
        summed = dist_utils.all_reduce_sum([local_sums[k] for k in keys] + list(counts.values()))
        rows_total, tokens_total = summed[-2], summed[-1]
        per_token = {"rollout/logprob_diff_mean", "rollout/logprob_diff_frac"}
        totals = {"reward/timeouts", "reward/errors"}
        metrics = {}
        for k, v in zip(keys, summed):
            if k in totals:
                metrics[k] = v
            else:
                metrics[k] = v / max(tokens_total if k in per_token else rows_total, 1.0)
        maxima = dist_utils.all_gather_objects(
            (float(lengths.max()), float(diff.max()) if diff.numel() else 0.0)
        )
        metrics["response/length_max"] = max(m[0] for m in maxima)
        metrics["rollout/logprob_diff_max"] = max(m[1] for m in maxima)
        for k, values in loss_metrics.items():
            gathered = [v for vs in dist_utils.all_gather_objects(values) for v in vs]
            finite = [v for v in gathered if not math.isnan(v)]
            if not finite:
                metrics[k] = math.nan
            elif k.endswith("_max"):
                metrics[k] = max(finite)
            elif k.endswith("_min"):
                metrics[k] = min(finite)
            elif k == "policy/loss":
                metrics[k] = sum(finite) / self.cfg.mini_batches
            else:
                metrics[k] = sum(finite) / len(finite)
        gen_tokens = dist_utils.all_reduce_sum([float(lengths.sum())])[0]
        metrics.update(timings)
        metrics["perf/rollout_tokens_per_s"] = gen_tokens / max(timings["perf/rollout_s"], 1e-9)
        metrics["perf/train_tokens_per_s"] = (
            tokens_total * self.cfg.mini_batches / max(timings["perf/train_s"], 1e-9)
        )
        return metrics

    def _log_step(
        self, step: int, metrics: dict[str, float], sb: StepBatch, last: dict[str, Any]
    ) -> None:
        if not self.is_main:
            return
        mon, cfg = self.monitor, self.cfg
        mon.scalars(metrics, step)
        mon.histogram("hist/advantages", sb.advantages, step)
        if last:
            mon.histogram("hist/entropy", last["entropy"][last["mask"]], step)
            mon.histogram("hist/trace_ratio", last["ratio"][last["loss_mask"]], step)
        if cfg.sample_every and step % cfg.sample_every == 0:
            lines = [
                f"**reward {float(sb.rewards[i]):.2f}** (gold {sb.golds[i]}): {sb.texts[i]}"
                for i in range(min(4, len(sb.texts)))
            ]
            mon.text("samples", "\n\n".join(lines), step)
        if cfg.image_every and step % cfg.image_every == 0 and last:
            self._log_credit(step, sb, last)

    def _log_credit(self, step: int, sb: StepBatch, last: dict[str, Any]) -> None:
        """Picture of one answer's per-token credit under the step's selection (the one the
        update used), computed on its micro-batch."""
        rows = last["rows"]
        adv = sb.advantages[rows]
        candidates = torch.nonzero(adv != 0).flatten()  # an answer that received credit
        credit = token_credit(
            last["logp"].double(),
            sb.old_logprobs[rows].double(),
            adv.double(),
            last["mask"],
            entropy=last["entropy"].double(),
            config=self.trace_cfg,
            max_len=self.cfg.max_new_tokens,
            selected=None if sb.selected is None else sb.selected[rows],
        )
        i = int(candidates[0]) if len(candidates) else 0  # else all-zero credit, still shown
        n = int(last["mask"][i].sum())
        ids = sb.batch.response_ids[rows][i, :n].tolist()
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        title = (
            f"step {step}: credit per token ({self.cfg.loss}), A = {float(adv[i]):+.2f}, "
            f"reward {float(sb.rewards[rows][i]):.2f}"
        )
        figure = credit_figure(tokens, credit[i, :n].tolist(), title)
        self.monitor.figure("credit/tokens", figure, step)

    # ------------------------------------------------------------------ weights, eval, io
    def sync_weights(self, version: int) -> None:
        """Send the current (gathered) weights to the rollout engine, stamped ``version``."""
        named = dist_utils.gathered_named_parameters(self.engine.module, zero3=self.zero3)
        self.rollout.sync_weights(named, version)

    def evaluate(self, step: int, label: str) -> dict[str, float]:
        """Held-out accuracy with the rollout engine (rank 0), logged as ``eval/*``."""
        from strace_ds.evaluation import eval_scalars, evaluate_benchmark

        scalars: dict[str, float] = {}
        if self.is_main:
            sampling = SamplingParams(
                max_new_tokens=self.cfg.max_new_tokens,
                temperature=self.cfg.eval_temperature,
                seed=step_seed(self.cfg.seed, step, 0, "eval"),
            )
            result = evaluate_benchmark(
                self.rollout,
                self.tokenizer,
                self.eval_data,
                k=self.cfg.eval_k,
                sampling=sampling,
                reward_pool=self.reward_pool,
                instruction=self.instruction,
                name=self.eval_name,
                progress=False,
            )
            scalars = eval_scalars(result)
            scalars["eval/accuracy"] = result.avg_at_k
            self.monitor.scalars(scalars, step)
            self._log(
                f"eval ({label}): accuracy {100 * result.avg_at_k:.1f}% on "
                f"{len(self.eval_data)} held-out problems (avg@{self.cfg.eval_k})"
            )
        scalars = dist_utils.broadcast_object(scalars)
        self.state.history.append({"eval_step": float(step), **scalars})
        return scalars

    @property
    def eval_name(self) -> str:
        return self.cfg.eval_dataset or "synthetic"

    def save(self) -> Path:
        path = ckpt.save_checkpoint(self.engine, self.ckpt_dir, self.state, self.cfg.keep_last)
        self._log(f"checkpoint: {path}")
        return path

    def export(self, out_dir: Path) -> Path:
        """Consolidated weights + tokenizer in Hugging Face format, written atomically.

        An existing ``out_dir`` is replaced by :func:`strace_ds.publish.publish_dir`: a kill
        mid-replace leaves the old copy at ``.<name>.old``, which
        :func:`strace_ds.publish.recover_dir` (or the next export) puts back.
        """
        named = dist_utils.gathered_named_parameters(self.engine.module, zero3=self.zero3)
        state = {name: t for name, t in named}  # every rank gathers; rank 0 writes
        if self.is_main:
            tmp = out_dir.with_name(f".tmp-{out_dir.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            module = self.engine.module
            module.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))
        # Sizes and checksums of the export (every rank hashes a share), written last.
        from strace_ds.manifest import write_manifest

        write_manifest(out_dir.with_name(f".tmp-{out_dir.name}"))
        if self.is_main:
            publish_dir(tmp, out_dir)
            self._log(f"exported the policy to {out_dir}")
        dist_utils.barrier()
        return out_dir

    def close(self) -> None:
        self.monitor.close()
        self.reward_pool.close()
        self.rollout.close()


def grading_error_streak(
    history: list[dict[str, float]], rows: int, max_frac: float, patience: int
) -> list[float] | None:
    """The error fractions of the last ``patience`` training steps of ``history`` when each is
    above ``max_frac`` (``reward/errors`` over ``rows`` answers per step), else None."""
    if patience < 1:
        return None
    steps = [h["reward/errors"] for h in history if "reward/errors" in h][-patience:]
    if len(steps) < patience:
        return None
    fracs = [e / max(rows, 1) for e in steps]
    return fracs if all(f > max_frac for f in fracs) else None


def _check_version(got: int | None, expected: int) -> None:
    if got is not None and got != expected:
        raise RuntimeError(
            f"rollout answered with weight_version {got}, expected {expected}: stale weights "
            "would train on the wrong policy"
        )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _local_device() -> str:
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    return "cpu" if name == "cpu" else f"{name}:{dist_utils.local_rank_from_env()}"


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def run(config: TrainConfig) -> dict[str, float]:
    """Train with ``config`` and release everything; returns the last step's metrics."""
    trainer = Trainer(config)
    try:
        return trainer.train()
    finally:
        trainer.close()


__all__ = ["METRIC_NAMES", "RunAbortedError", "Trainer", "TrainConfig", "run", "step_seed"]
