"""The training loop: schedule steps, evaluate, save, export, resume.

One step::

    ExperienceProducer (strace_ds.train.experience): prompts -> RolloutEngine.generate (G answers
        each, sampling log-probs) -> RewardPool (math-verify in worker processes, hard
        timeout) -> group advantages -> an Experience stamped with its weight version
    PolicyUpdater (strace_ds.train.updater): proximal log-probs -> selection -> epochs x
        mini-batches x [forward (ZeRO-3) -> log-probs + entropy -> policy_loss ->
        engine.backward / engine.step]
    weight sync to the rollout engine -> step metrics (strace_ds.train.metrics) -> TensorBoard

With ``--max_staleness K >= 1`` the producer runs in a background thread, generating the next
steps while this one trains (:class:`strace_ds.train.experience.AsyncExperience`); every answer is
trained at most K policy versions after the one that produced it.

Data parallelism: each rank samples, grades and trains on its share of the step's prompts;
DeepSpeed averages gradients, and the loss normaliser is global (all-reduced) so that the
update equals the single-process one. The components are built by :mod:`strace_ds.train.setup`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from strace_ds import distributed as dist_utils
from strace_ds.config import TrainConfig
from strace_ds.data.prompts import fit_to_context
from strace_ds.distributed import init_distributed
from strace_ds.losses import METRIC_NAMES
from strace_ds.seeding import seed_everything
from strace_ds.storage import checkpoint as ckpt
from strace_ds.storage.publish import publish_dir
from strace_ds.storage.run_identity import check_identity, run_identity
from strace_ds.storage.run_lock import RunDirLockedError, RunLock
from strace_ds.train import setup as builders
from strace_ds.train.experience import (
    AsyncExperience,
    Experience,
    ExperienceProducer,
    StalenessError,
    check_staleness,
    step_seed,
)
from strace_ds.train.host_memory import reuse_freed_host_memory
from strace_ds.train.metrics import local_step_stats, reduce_step_metrics, timed
from strace_ds.train.monitor import METRICS_FILE, MetricsLog, Monitor
from strace_ds.train.step_log import log_step
from strace_ds.train.updater import PolicyUpdater, resolve_old_logprobs

INFLIGHT_FILE = "inflight-rank{rank}.pt"
"""Per-rank file of a checkpoint holding the answers generated but not yet trained on
(``--max_staleness >= 1``): they came from policies the checkpoint no longer has."""


class RunAbortedError(RuntimeError):
    """The run stopped itself because going on would waste it (e.g. answers that cannot be
    graded); a checkpoint of the last step was saved first."""


class Trainer:
    """Builds every component from a :class:`TrainConfig` and runs the loop."""

    def __init__(self, config: TrainConfig) -> None:
        init_distributed()
        self.cfg = config
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        config.validate(world_size=self.world)
        self.is_main = self.rank == 0
        # One writer per run directory, for the run's life (released by close() or exit).
        self._run_lock = RunLock(config.run_dir)
        refused = None
        if self.is_main:
            try:
                self._run_lock.acquire()
            except RunDirLockedError as err:
                refused = str(err)
        refused = dist_utils.broadcast_object(refused)
        if refused:
            raise ValueError(refused)
        try:
            self._build(config)
        except BaseException:
            self._run_lock.release(tidy=True)  # a failed start-up leaves no run directory
            raise

    def _build(self, config: TrainConfig) -> None:
        self.ckpt_dir = config.run_dir / "checkpoints"
        self.identity = run_identity(config, self.world)
        # Before anything heavy: a resume that would change the run, or a relaunch over one.
        self.resume_from = self.find_resume()
        self.trace_cfg = config.trace_config()
        seed_everything(config.seed)
        self._log(f"strace_ds: {self.world} rank(s), loss={config.loss} {self.trace_cfg}")
        if config.host_memory_reuse:  # before the model and the first batch are allocated
            self._log(reuse_freed_host_memory())
        self.layout = config.layout(self.world)
        self.model_path = builders.resolve_model(config.data, self._log)
        self.tokenizer = builders.load_tokenizer(self.model_path)
        self.instruction = builders.run_instruction(config.data)
        self.train_data = builders.load_train_data(
            config.data, config.seed, config.max_bad_gold_frac, self.rank, self.world, self._log
        )
        self.prompt_ids = [self._encode(ex.prompt) for ex in self.train_data.examples]
        self.train_data, self.prompt_ids, dropped = fit_to_context(
            self.train_data, self.prompt_ids, builders.model_context_of(self.model_path),
            config.max_new_tokens, drop=config.drop_long_prompts,
        )  # fmt: skip
        if dropped:
            self._log(f"data: {dropped} prompts longer than the model's context minus "
                      f"max_new_tokens skipped (--drop_long_prompts); {len(self.prompt_ids)} "
                      "left")  # fmt: skip
        # Before the model: a reward function that cannot be imported fails the start at once.
        self.reward_pool = builders.build_reward_pool(config.rewards)
        # Before HfDeepSpeedConfig exists: the in-process engine loads a plain copy.
        self.rollout = builders.build_rollout(
            config.rollouts, config.run_dir, self.model_path, self.tokenizer, self.is_main
        )
        policy = builders.build_policy_engine(
            config.optim, config.ds_config, self.layout, self.model_path, self._log
        )
        self.engine, self.zero3, self.on_cpu = policy.engine, policy.zero3, policy.on_cpu
        self.ds_config, self._hf_ds_config = policy.ds_config, policy.hf_ds_config
        self.lora_scaling = policy.lora_scaling
        self.producer = ExperienceProducer(
            config.rollouts, config.objective, self.layout, config.seed, self.rollout,
            self.reward_pool, self.tokenizer, self.train_data, self.prompt_ids, self.rank,
        )  # fmt: skip
        reference = None
        if config.kl_coef > 0:  # beta = 0 loads no reference and changes nothing
            reference = builders.build_reference_engine(
                config.objective, self.model_path, policy, self._log
            )
        old_logprobs, why = resolve_old_logprobs(
            config.objective, config.rollouts, in_process=config.rollouts.rollout == "hf",
            rollout_dtype=getattr(self.rollout, "dtype", None),
            policy_dtype=next(self.engine.module.parameters()).dtype,
        )  # fmt: skip
        self._log(f"proximal log-probs: {why}")
        self.updater = PolicyUpdater(
            self.engine, dataclasses.replace(config.objective, old_logprobs=old_logprobs),
            config.optim, config.rollouts, self.layout, config.seed, self.rank,
            reference=reference,
        )  # fmt: skip
        self.experience: AsyncExperience | None = None  # the background producer (K >= 1)
        self.monitor = Monitor(Path(config.log_dir) / config.name, enabled=self.is_main,
                               report_to=config.report_to, run_name=config.name,
                               params=config.to_dict())  # fmt: skip
        self.metrics_log = MetricsLog(config.run_dir / METRICS_FILE, enabled=self.is_main)
        self.state = ckpt.TrainerState(identity=self.identity)
        self.eval_data = builders.load_eval_data(config.eval, config.dataset, config.seed)
        # Held-out accuracy is the verifier's alone, whatever --reward trains on.
        self.eval_pool = self.reward_pool
        if self.eval_data is not None and config.reward != "math_verify":
            self.eval_pool = builders.build_reward_pool(config.rewards, spec="math_verify")
        self._inflight: list[Experience] = []

    def _log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg)

    def _encode(self, question: str) -> list[int]:
        from strace_ds.data.prompts import build_prompt_ids

        return build_prompt_ids(self.tokenizer, question, self.instruction)

    def find_resume(self) -> Path | None:
        """The checkpoint this run continues (``--resume``), verified against its manifest (a
        broken ``latest`` falls back, and says so) and against this run's identity; None for
        a fresh start. A run directory that already holds checkpoints is refused without
        ``--resume``: relaunching would retrain it and overwrite them. Collective."""
        cfg = self.cfg
        if not cfg.resume:
            if ckpt.has_checkpoints(self.ckpt_dir):
                raise ValueError(
                    f"run directory {cfg.run_dir} already holds checkpoints of a run; add "
                    "--resume auto to continue it, or give this run a new --run_name (or "
                    "--output_dir)"
                )
            return None
        found = ckpt.find_checkpoint(cfg.resume, self.ckpt_dir, log=self._log)
        if found is not None:
            overrides = tuple(n.strip() for n in (cfg.resume_override or "").split(",") if n)
            changed = check_identity(ckpt.read_identity(found), self.identity, overrides,
                                     where=f"the checkpoint {found}")  # fmt: skip
            if changed:
                self._log(f"resume: changed by --resume_override: {'; '.join(changed)}")
        return found

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, float]:
        """Run (or resume) the configured number of steps; returns the last step's metrics."""
        cfg = self.cfg
        if cfg.resume:
            found = self.resume_from
            if found is not None:
                self.state = ckpt.load_checkpoint(self.engine, found, verify=False)
                self.state.identity = self.identity  # with any --resume_override applied
                self._inflight = self._load_inflight(found)
                self._log(
                    f"resumed from {found} at step {self.state.step}"
                    + (
                        f" with {len(self._inflight)} step(s) of answers in flight"
                        if self._inflight
                        else ""
                    )
                )
            else:
                self._log(f"resume=auto: no checkpoint in {self.ckpt_dir}, starting fresh")
            # Steps after the checkpoint's are re-run: TensorBoard drops their old points.
            self.monitor.resume_after(self.state.step if found is not None else -1)
        # metrics.jsonl holds this run's history as it stands (re-run steps appear once).
        self.metrics_log.reset(self.state.history)
        if self.state.step >= cfg.steps:
            # A relaunch of a finished run: saving again would only risk the last checkpoint.
            self._log(
                f"run {cfg.name} already finished at step {self.state.step} "
                f"(steps={cfg.steps}): nothing to train"
            )
            if cfg.export:
                from strace_ds.storage.manifest import check_manifest

                problems = check_manifest(cfg.run_dir / "final")
                if problems:
                    self._log(
                        f"export {cfg.run_dir / 'final'}: {'; '.join(problems)}; exporting it again"
                    )
                    self.export(cfg.run_dir / "final")
            return next((h for h in reversed(self.state.history) if "reward/mean" in h), {})
        self.sync_weights(self.state.step)
        if cfg.max_staleness > 0:
            self.experience = AsyncExperience(
                self.producer, cfg.max_staleness, first_step=self.state.step + 1,
                last_step=cfg.steps, engine_version=self.state.step, ready=self._inflight,
            )  # fmt: skip
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
            self.metrics_log.append(last, step=step)
            bar.update(1)
            bar.set_postfix(
                {
                    k.split("/")[-1]: f"{last[k]:.3g}"
                    for k in ("reward/mean", "policy/loss", "select/frac", "perf/step_s")
                    if k in last
                }
            )
            self._warn_on_timeouts(last)
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

    def _warn_on_timeouts(self, metrics: dict[str, float]) -> None:
        """One line on rank 0 for a step whose rewards timed out (they score 0 and count toward
        ``max_grading_error_frac`` like errors): how many, which reward, the limit."""
        n = int(metrics.get("reward/timeouts", 0))
        if n <= 0:
            return
        which = getattr(self, "_last_grading_timeout", None)
        self._log(
            f"warning: step {self.state.step}: {n} of "
            f"{self.cfg.prompts_per_step * self.cfg.group_size} answers' rewards ran past "
            f"reward_timeout_s={self.cfg.reward_timeout_s:g} s"
            + (f" (e.g. reward {which!r})" if which else "")
            + "; they score 0 and count toward max_grading_error_frac"
        )

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
        slow = getattr(self, "_last_grading_timeout", None)
        raise RunAbortedError(
            f"stopping at step {self.state.step}: more than max_grading_error_frac="
            f"{cfg.max_grading_error_frac} of the answers failed to grade (errors or timeouts) in "
            f"{cfg.grading_error_patience} consecutive steps (error fractions "
            f"{', '.join(f'{f:.2f}' for f in fracs)}), so the run trains on zero reward. "
            + (f"Last grading error: {last[:300]}. " if last else "")
            + (
                f"Reward {slow!r} ran past reward_timeout_s={cfg.reward_timeout_s:g} s. "
                if slow
                else ""
            )
            + f"A checkpoint of step {self.state.step} was saved; fix the golds or the grader "
            "and --resume auto (or raise --max_grading_error_frac / set "
            "--grading_error_patience 0)"
        )

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        t_start = time.perf_counter()
        if self.experience is None:
            exp, waited = self.producer.produce(step), 0.0
        else:
            exp, waited = self.experience.get(step)
        staleness = check_staleness(exp.weight_version, step, cfg.max_staleness)
        self._last_grading_error = exp.first_error
        self._last_grading_timeout = exp.first_timeout
        timings = dict(exp.timings)
        with timed(timings, "perf/old_logprob_s"):
            exp = self.updater.prepare(exp)
        with timed(timings, "perf/train_s"):
            loss_metrics, last_micro = self.updater.update(exp, step)
        with timed(timings, "perf/sync_s"):
            if self.experience is None:
                self.sync_weights(step)
            else:
                waited += self.experience.sync_weights(step, lambda: self.sync_weights(step))
        timings["perf/step_s"] = time.perf_counter() - t_start
        if self.experience is not None:
            timings["perf/trainer_idle_s"] = waited
            timings["perf/generator_idle_s"] = self.experience.take_idle()

        stats = local_step_stats(exp, exp.old_logprobs, loss_metrics)
        stats["staleness"] = float(staleness)
        per_rank = dist_utils.all_gather_objects(stats)
        metrics = reduce_step_metrics(
            per_rank, updates=cfg.mini_batches * cfg.epochs, timings=timings, epochs=cfg.epochs
        )
        if self.is_main:
            log_step(self.monitor, cfg.run, cfg.objective, cfg.max_new_tokens, self.tokenizer, step,
                     metrics, exp, last_micro)  # fmt: skip
        return metrics

    # ------------------------------------------------------------------ weights, eval, io
    def sync_weights(self, version: int) -> None:
        """Send the current (gathered) weights to the rollout engine, stamped ``version``."""
        self.rollout.sync_weights(self.policy_weights(), version)

    def policy_weights(self) -> Any:
        """The policy's gathered ``(name, tensor)`` pairs under the base model's names: with
        LoRA the merged weights (base + (alpha / r) B A). Collective: every rank iterates."""
        named = dist_utils.gathered_named_parameters(self.engine.module, zero3=self.zero3)
        if self.lora_scaling is None:
            return named
        from strace_ds.model.lora import merged_named_tensors

        return merged_named_tensors(named, self.lora_scaling)

    def _rollout_paused(self) -> Any:
        """The rollout engine to ourselves: the background producer waits meanwhile."""
        return self.experience.paused() if self.experience else contextlib.nullcontext()

    def evaluate(self, step: int, label: str) -> dict[str, float]:
        """Held-out accuracy with the rollout engine (rank 0), logged as ``eval/*``."""
        with self._rollout_paused():
            return self._evaluate(step, label)

    def _evaluate(self, step: int, label: str) -> dict[str, float]:
        from strace_ds.evaluation import eval_scalars, evaluate_benchmark

        scalars: dict[str, float] = {}
        if self.is_main:
            sampling = self.cfg.eval_sampling_params(step_seed(self.cfg.seed, step, 0, "eval"))
            result = evaluate_benchmark(
                self.rollout,
                self.tokenizer,
                self.eval_data,
                k=self.cfg.eval_k,
                sampling=sampling,
                reward_pool=self.eval_pool,
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
        self.metrics_log.append(self.state.history[-1])
        return scalars

    @property
    def eval_name(self) -> str:
        from strace_ds.data.tasks import generated_task

        name = self.cfg.eval_dataset or (
            self.cfg.dataset if generated_task(self.cfg.dataset) else "synthetic"
        )
        return name.partition(":")[0] if generated_task(name) else name

    def save(self) -> Path:
        """A checkpoint of the step just done, with the answers in flight (K >= 1)."""
        inflight = self.experience.in_flight() if self.experience else []

        def write_inflight(tag_dir: Path) -> None:
            if inflight:
                torch.save(
                    [e.to_state() for e in inflight],
                    tag_dir / INFLIGHT_FILE.format(rank=self.rank),
                )

        path = ckpt.save_checkpoint(
            self.engine, self.ckpt_dir, self.state, self.cfg.keep_last, extra=write_inflight
        )
        self._log(f"checkpoint: {path}")
        return path

    def _load_inflight(self, found: Path) -> list[Experience]:
        """The checkpoint's answers in flight for this rank; [] when it has none. Each is
        checked against the staleness bound before it is trained on."""
        file = Path(found) / INFLIGHT_FILE.format(rank=self.rank)
        if not file.is_file():
            return []
        if self.cfg.max_staleness == 0:
            self._log(
                f"resume: {found} holds answers in flight but max_staleness=0: "
                "they are dropped and the steps regenerated"
            )
            return []
        states = torch.load(file, weights_only=False)
        return [Experience.from_state(s) for s in states]

    def export(self, out_dir: Path) -> Path:
        """Consolidated weights + tokenizer in Hugging Face format, written atomically.

        An existing ``out_dir`` is replaced by :func:`strace_ds.storage.publish.publish_dir`: a kill
        mid-replace leaves the old copy at ``.<name>.old``, which
        :func:`strace_ds.storage.publish.recover_dir` (or the next export) puts back.
        """
        # every rank gathers; rank 0 writes
        raw = list(dist_utils.gathered_named_parameters(self.engine.module, zero3=self.zero3))
        adapter = {n: t for n, t in raw if ".lora_" in n}
        merged = self.lora_scaling is None or self.cfg.export_merged
        if self.is_main:
            tmp = out_dir.with_name(f".tmp-{out_dir.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if merged:
                from strace_ds.model.lora import merged_named_tensors

                state = dict(raw if self.lora_scaling is None
                             else merged_named_tensors(raw, self.lora_scaling))  # fmt: skip
                self._base_model().save_pretrained(str(tmp), state_dict=state,
                                                   safe_serialization=True)  # fmt: skip
            if adapter:
                from strace_ds.model.lora import save_adapter

                save_adapter(tmp / "adapter", adapter, self.cfg.optim, self.model_path)
            self.tokenizer.save_pretrained(str(tmp))
        # Sizes and checksums of the export (every rank hashes a share), written last.
        from strace_ds.storage.manifest import write_manifest

        write_manifest(out_dir.with_name(f".tmp-{out_dir.name}"))
        if self.is_main:
            publish_dir(tmp, out_dir)
            self._log(f"exported the policy to {out_dir}")
        dist_utils.barrier()
        return out_dir

    def _base_model(self) -> Any:
        """The policy module, for its ``save_pretrained`` (config and class of the base)."""
        return self.engine.module

    def close(self) -> None:
        try:
            if self.experience is not None:
                self.experience.close()
            self.monitor.close()
            if self.eval_pool is not self.reward_pool:
                self.eval_pool.close()
            self.reward_pool.close()
            self.rollout.close()
        finally:
            lock = getattr(self, "_run_lock", None)
            if lock is not None:
                lock.release()


def grading_error_streak(
    history: list[dict[str, float]], rows: int, max_frac: float, patience: int
) -> list[float] | None:
    """The error fractions of the last ``patience`` training steps of ``history`` when each is
    above ``max_frac`` (``reward/errors`` plus ``reward/timeouts`` over ``rows`` answers per
    step: an answer whose reward hangs trains on 0 like one whose reward raises), else None."""
    if patience < 1:
        return None
    steps = [
        h["reward/errors"] + h.get("reward/timeouts", 0.0) for h in history if "reward/errors" in h
    ][-patience:]
    if len(steps) < patience:
        return None
    fracs = [e / max(rows, 1) for e in steps]
    return fracs if all(f > max_frac for f in fracs) else None


def run(config: TrainConfig) -> dict[str, float]:
    """Train with ``config`` and release everything; returns the last step's metrics."""
    trainer = Trainer(config)
    try:
        return trainer.train()
    finally:
        trainer.close()


__all__ = [
    "METRIC_NAMES",
    "RunAbortedError",
    "StalenessError",
    "Trainer",
    "TrainConfig",
    "run",
    "step_seed",
]
