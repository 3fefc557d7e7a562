"""The experience producer: prompts -> rollouts -> rewards -> advantages -> a typed batch.

One :class:`Experience` is one rank's share of one training step, stamped with the weight
version that generated it. :class:`ExperienceProducer` makes them one at a time, in the
caller's thread; :class:`AsyncExperience` (``--max_staleness K >= 1``) runs the same producer in
a background thread, ahead of the updater, so that generation overlaps the policy update.

Staleness schedule (``K = max_staleness``): the answers of step ``t`` (1-based) are generated
with weight version ``v(t) = max(0, t - 1 - K)`` exactly, and trained when the policy is at
version ``t - 1``: at most ``K`` versions behind, and the same answers whatever the timing of
the two threads (so a run is reproducible and resumable). Weights are synced to the rollout
engine only while the producer is between steps, so no in-flight request is ever lost or
served by two policies. With ``K = 0`` nothing runs in the background: today's synchronous
loop.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from strace_ds.losses.advantages import group_advantages
from strace_ds.model.batch import RolloutBatch, collate_rollouts
from strace_ds.rollout import Generation
from strace_ds.seeding import step_seed
from strace_ds.train.layout import BatchLayout
from strace_ds.train.metrics import timed

if TYPE_CHECKING:
    from strace_ds.config import ObjectiveConfig, RolloutConfig

__all__ = [
    "AsyncExperience",
    "Experience",
    "ExperienceProducer",
    "StalenessError",
    "check_staleness",
    "generation_version",
    "prompt_positions",
    "step_seed",
]


class StalenessError(RuntimeError):
    """Answers older than the staleness bound (or from a policy newer than the trainer's)."""


def generation_version(step: int, max_staleness: int) -> int:
    """The weight version that generates step ``step``'s answers: ``max(0, step - 1 - K)``."""
    return max(0, step - 1 - max_staleness)


def check_staleness(got: int | None, step: int, max_staleness: int) -> int:
    """Staleness of answers made by version ``got`` and trained at step ``step`` (policy at
    version ``step - 1``); :class:`StalenessError` beyond ``max_staleness`` or from the future.
    ``got=None`` (an engine that does not report versions) counts as the scheduled version."""
    trained_on = step - 1
    if got is None:
        got = generation_version(step, max_staleness)
    staleness = trained_on - got
    if not 0 <= staleness <= max_staleness:
        raise StalenessError(
            f"rollout answered step {step} with weight_version {got}, but the policy is at "
            f"version {trained_on} and max_staleness={max_staleness}: answers "
            + ("from a newer policy" if staleness < 0 else f"{staleness} versions old")
            + " would train on the wrong policy"
        )
    return staleness


def prompt_positions(
    step: int, prompts_per_step: int, mini_batches: int, rank: int, world: int
) -> list[int]:
    """Positions in the epoch-by-epoch prompt stream of this rank's prompts at ``step``
    (:meth:`strace_ds.train.layout.BatchLayout.prompt_positions`)."""
    layout = BatchLayout(prompts_per_step, 1, mini_batches, 1, world)
    return layout.prompt_positions(step, rank)


@dataclass
class Experience:
    """One rank's answers of one step, filled stage by stage: the producer's sampling, grading
    and advantages, then :meth:`~strace_ds.train.updater.PolicyUpdater.prepare`'s proximal
    policy and selection. The one container of a step's data (``N`` rows, ``R`` answer
    columns)."""

    step: int
    weight_version: int | None
    indices: list[int]  # dataset rows of this rank's prompts
    batch: RolloutBatch
    rewards: torch.Tensor  # [N] after the overlong shaping
    correct: torch.Tensor  # [N] the grader's reward before shaping
    advantages: torch.Tensor  # [N]
    loss_rows: torch.Tensor  # [N] bool, rows that enter the loss (overlong/filter masks)
    lengths: torch.Tensor  # [N] answer lengths in tokens
    truncated: list[bool]
    zero_variance_frac: float
    texts: list[str]
    golds: list[str]
    num_timeouts: int = 0
    num_errors: int = 0
    first_error: str | None = None  # "label: ExcType: message" of one failed answer
    first_timeout: str | None = None  # the label of a reward that timed out
    timings: dict[str, float] = field(default_factory=dict)  # perf/rollout_s, perf/reward_s
    components: dict[str, torch.Tensor] = field(default_factory=dict)  # each reward, unweighted
    draws: int = 1  # generate calls this step took (DAPO re-sampling)
    # --- filled by PolicyUpdater.prepare --------------------------------------------------
    old_logprobs: torch.Tensor | None = None  # [N, R] proximal policy (the ratio's denominator)
    # [N] bool: rows whose proximal log-probs the first update's own forward fills (their
    # old_logprobs rows stay 0 until then; PolicyUpdater.prepare), or None
    proximal_pending: torch.Tensor | None = None
    selected: torch.Tensor | None = None  # [N, R] bool, the step's selection (S-trace, 80/20)
    entropy_threshold: float = math.nan  # its tau, over all ranks' loss tokens
    behaviour_weight: torch.Tensor | None = None  # [N, R] detached, --behaviour_correction
    behaviour_metrics: dict[str, float] | None = None
    ref_logprobs: torch.Tensor | None = None  # [N, R] the frozen reference (--kl_coef > 0)
    kl_metrics: dict[str, float] | None = None  # --kl_in reward: policy/kl_ref

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def loss_tokens(self) -> torch.Tensor:
        """``[N, R]`` bool: the valid answer tokens of the rows that enter the loss."""
        return self.batch.response_mask & self.loss_rows.unsqueeze(-1)

    def to_state(self) -> dict[str, Any]:
        """A torch.save-able dict (checkpoints of a run with batches in flight)."""
        state = {k: getattr(self, k) for k in self.__dataclass_fields__}
        state["batch"] = {k: getattr(self.batch, k) for k in self.batch.__dataclass_fields__}
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Experience:
        state = dict(state)
        state["batch"] = RolloutBatch(**state["batch"])
        return cls(**state)


class ExperienceProducer:
    """Makes the :class:`Experience` of a step: sample, grade, shape, group advantages."""

    def __init__(
        self,
        rollouts: RolloutConfig,
        objective: ObjectiveConfig,
        layout: BatchLayout,
        seed: int,
        rollout: Any,
        reward_pool: Any,
        tokenizer: Any,
        data: Any,
        prompt_ids: list[list[int]],
        rank: int = 0,
    ) -> None:
        """``rollouts``: how answers are sampled; ``objective``: rewards shaping and
        advantages; ``layout``: which prompts this rank draws; ``seed``: the run's."""
        self.rollouts, self.objective, self.layout, self.seed = rollouts, objective, layout, seed
        self.rollout, self.reward_pool = rollout, reward_pool
        self.tokenizer, self.data, self.prompt_ids = tokenizer, data, prompt_ids
        self.rank, self.world = rank, layout.world
        self._orders: dict[int, torch.Tensor] = {}

    def prompts_for_step(self, step: int) -> list[int]:
        """Indices of this rank's prompts at ``step``: a seeded permutation, epoch by epoch
        (:func:`prompt_positions` says which positions)."""
        n = len(self.prompt_ids)
        out = []
        for pos in self.layout.prompt_positions(step, self.rank):
            epoch, offset = divmod(pos, n)
            out.append(int(self._order(epoch)[offset]))
        return out

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            n = len(self.prompt_ids)
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(n, generator=gen)}  # one epoch at a time
        return self._orders[epoch]

    def produce(self, step: int) -> Experience:
        """The step's experience. With ``--filter_zero_variance`` and ``max_sampling_draws >
        1`` (DAPO's dynamic sampling) more prompts are drawn while fewer than the step's
        number of groups have unequal rewards; the batch keeps the informative groups in the
        order drawn, topped up with silent ones (masked out of the loss) when the cap is hit.
        """
        cfg = self.objective
        indices = self.prompts_for_step(step)
        draws = [self._draw(step, indices, 0)]
        if cfg.filter_zero_variance and cfg.max_sampling_draws > 1:
            while (
                sum(int(d.informative.sum()) for d in draws) < len(indices)
                and len(draws) < cfg.max_sampling_draws
            ):
                extra = self._extra_prompts(step, len(draws), len(indices))
                draws.append(self._draw(step, extra, len(draws)))
        if len(draws) == 1:
            return self._assemble(step, draws[0], 1)
        informative = [(d, g) for d in draws for g in range(len(d.indices)) if d.informative[g]]
        silent = [(d, g) for d in draws for g in range(len(d.indices)) if not d.informative[g]]
        chosen = (informative + silent)[: len(indices)]
        return self._assemble(step, _merge(chosen, draws, self.layout.group_size), len(draws))

    def _extra_prompts(self, step: int, draw: int, n: int) -> list[int]:
        """``n`` more prompts for re-sampling draw ``draw`` of ``step`` (seeded per rank)."""
        gen = torch.Generator().manual_seed(
            step_seed(self.seed, step, self.rank, f"resample{draw}")
        )
        return torch.randperm(len(self.prompt_ids), generator=gen)[:n].tolist()

    def _draw(self, step: int, indices: list[int], draw: int) -> _Draw:
        """Sample and grade ``indices``' groups (draw 0: the step's own prompts and seed)."""
        cfg, group_size = self.objective, self.layout.group_size
        seconds: dict[str, float] = {}
        with timed(seconds, "rollout"):
            prompts = [self.prompt_ids[i] for i in indices]
            purpose = "rollout" if draw == 0 else f"rollout-draw{draw}"
            sampling = self.rollouts.sampling_params(step_seed(self.seed, step, self.rank, purpose))
            generation = self.rollout.generate(prompts, n=group_size, sampling=sampling)
        t0 = time.perf_counter()  # grading, then shaping: the reward's time
        texts = self.tokenizer.batch_decode(generation.token_ids, skip_special_tokens=True)
        examples = [self.data[indices[i]] for i in generation.prompt_index]
        golds = [ex.answer for ex in examples]
        graded = self.reward_pool.score(
            texts, golds, [dict(ex.meta) for ex in examples], prompts=[ex.prompt for ex in examples]
        )
        rewards = torch.tensor(graded.rewards, dtype=torch.float32)
        components = {
            label: torch.tensor(values, dtype=torch.float32)
            for label, values in (graded.components or {}).items()
        }
        # Accuracy is the verifier's verdict, whatever else the reward adds.
        verifier = next((k for k in ("math_verify", "synthetic") if k in components), None)
        correct = components[verifier].clone() if verifier else rewards.clone()
        lengths = torch.tensor([len(t) for t in generation.token_ids], dtype=torch.float32)
        truncated = [r == "length" for r in generation.finish_reasons]
        from strace_ds.rewards import apply_overlong

        rewards, keep = apply_overlong(
            rewards,
            lengths,
            truncated,
            self.rollouts.max_new_tokens,
            cfg.overlong,
            cfg.overlong_buffer,
        )
        silent = group_advantages(rewards, group_size, method=cfg.advantage)
        return _Draw(
            indices=indices, prompts=prompts, generation=generation, texts=texts, golds=golds,
            rewards=rewards, correct=correct, keep=keep.bool(), lengths=lengths,
            truncated=truncated, components=components,
            informative=~silent.zero_variance_mask, num_timeouts=graded.num_timeouts,
            num_errors=graded.num_errors, first_error=_first_failure(graded, "errors"),
            first_timeout=_first_failure(graded, "timed_out"),
            rollout_s=seconds["rollout"], reward_s=time.perf_counter() - t0,
        )  # fmt: skip

    def _assemble(self, step: int, d: _Draw, draws: int) -> Experience:
        cfg, group_size = self.objective, self.layout.group_size
        adv = group_advantages(d.rewards, group_size, method=cfg.advantage)
        loss_rows = d.keep.clone()
        if cfg.filter_zero_variance:
            loss_rows &= ~adv.zero_variance_mask.repeat_interleave(group_size)
        batch = collate_rollouts(d.prompts, d.generation, self.tokenizer.pad_token_id)
        return Experience(
            step=step,
            weight_version=d.generation.weight_version,
            indices=d.indices,
            batch=batch,
            rewards=d.rewards,
            correct=d.correct,
            advantages=adv.advantages.float(),
            loss_rows=loss_rows,
            lengths=d.lengths,
            truncated=d.truncated,
            zero_variance_frac=float(adv.zero_variance_frac),
            texts=d.texts,
            golds=d.golds,
            num_timeouts=d.num_timeouts,
            num_errors=d.num_errors,
            first_error=d.first_error,
            first_timeout=d.first_timeout,
            timings={"perf/rollout_s": d.rollout_s, "perf/reward_s": d.reward_s},
            components=d.components,
            draws=draws,
        )


@dataclass
class _Draw:
    """One generate-and-grade pass over some prompts (rows grouped per prompt)."""

    indices: list[int]
    prompts: list[list[int]]
    generation: Generation
    texts: list[str]
    golds: list[str]
    rewards: torch.Tensor  # [N] after the overlong shaping
    correct: torch.Tensor
    keep: torch.Tensor  # [N] bool, the overlong mask
    lengths: torch.Tensor
    truncated: list[bool]
    components: dict[str, torch.Tensor]
    informative: torch.Tensor  # [P] bool, the group's rewards are not all equal
    num_timeouts: int
    num_errors: int
    first_error: str | None
    first_timeout: str | None
    rollout_s: float
    reward_s: float


def _first_failure(graded: Any, kind: str) -> str | None:
    """The first reward failure of ``graded`` (a ``RewardResult``) named by its reward:
    ``"label: ExcType: message"`` (``kind="errors"``) or ``"label"`` (``kind="timed_out"``)."""
    per_label = getattr(graded, f"component_{kind}", None) or {}
    for label, values in per_label.items():
        hit = next((v for v in values if v), None)
        if hit:
            return label if kind == "timed_out" else f"{label}: {hit}"
    if kind == "errors":  # a pool without per-reward detail
        return next((e for e in graded.errors if e), None)
    return None


def _merge(chosen: list[tuple[_Draw, int]], draws: list[_Draw], group_size: int) -> _Draw:
    """One :class:`_Draw` of the ``chosen`` (draw, group) pairs, in that order; grading
    counts and times are those of all ``draws``."""
    G = group_size
    rows = [(d, g * G + i) for d, g in chosen for i in range(G)]
    gen = Generation(
        prompt_index=[k for k in range(len(chosen)) for _ in range(G)],
        token_ids=[d.generation.token_ids[r] for d, r in rows],
        logprobs=[d.generation.logprobs[r] for d, r in rows],
        finish_reasons=[d.generation.finish_reasons[r] for d, r in rows],
        weight_version=chosen[0][0].generation.weight_version,
    )
    labels = chosen[0][0].components
    return _Draw(
        indices=[d.indices[g] for d, g in chosen], prompts=[d.prompts[g] for d, g in chosen],
        generation=gen, texts=[d.texts[r] for d, r in rows], golds=[d.golds[r] for d, r in rows],
        rewards=torch.stack([d.rewards[r] for d, r in rows]),
        correct=torch.stack([d.correct[r] for d, r in rows]),
        keep=torch.stack([d.keep[r] for d, r in rows]),
        lengths=torch.stack([d.lengths[r] for d, r in rows]),
        truncated=[d.truncated[r] for d, r in rows],
        components={k: torch.stack([d.components[k][r] for d, r in rows]) for k in labels},
        informative=torch.stack([d.informative[g] for d, g in chosen]),
        num_timeouts=sum(d.num_timeouts for d in draws),
        num_errors=sum(d.num_errors for d in draws),
        first_error=next((d.first_error for d in draws if d.first_error), None),
        first_timeout=next((d.first_timeout for d in draws if d.first_timeout), None),
        rollout_s=sum(d.rollout_s for d in draws), reward_s=sum(d.reward_s for d in draws),
    )  # fmt: skip


class AsyncExperience:
    """The producer in a background thread, at most ``max_staleness`` versions ahead.

    The thread makes step ``t`` once the rollout engine holds version ``v(t)``
    (:func:`generation_version`) and queues it; :meth:`get` hands the steps out in order.
    :meth:`sync_weights` waits until the producer is between steps, runs the caller's sync
    (gathers and collectives stay in the caller's thread) and lets the producer go on.
    :meth:`paused` gives the caller the rollout engine (evaluation, checkpoints).

    ``ready`` are already-made steps (a checkpoint's in-flight batches); the producer starts
    after them.
    """

    def __init__(
        self,
        producer: ExperienceProducer,
        max_staleness: int,
        first_step: int,
        last_step: int,
        engine_version: int,
        ready: list[Experience] | None = None,
    ) -> None:
        if max_staleness < 1:
            raise ValueError(f"AsyncExperience needs max_staleness >= 1, got {max_staleness}")
        self.producer, self.K = producer, max_staleness
        self.last_step = last_step
        self._cv = threading.Condition()
        self._ready: dict[int, Experience] = {e.step: e for e in ready or []}
        self._next = max([first_step - 1, *self._ready]) + 1  # next step to generate
        self._version = engine_version  # held by the rollout engine
        self._busy = False  # generating now
        self._pause = 0
        self._stop = False
        self._error: BaseException | None = None
        self.generator_idle_s = 0.0  # since the last take_idle()
        self._thread = threading.Thread(target=self._run, name="experience", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer thread
    def _may_start(self) -> bool:
        return (
            self._next <= self.last_step
            and self._pause == 0
            and self._version == generation_version(self._next, self.K)
        )

    def _run(self) -> None:
        try:
            while True:
                t0 = time.perf_counter()
                with self._cv:
                    while not (self._stop or self._may_start()):
                        self._cv.wait()
                    if self._stop:
                        return
                    step, self._busy = self._next, True
                    self.generator_idle_s += time.perf_counter() - t0
                try:
                    exp = self.producer.produce(step)
                finally:
                    with self._cv:
                        self._busy = False
                        self._cv.notify_all()
                with self._cv:
                    self._ready[step] = exp
                    self._next = step + 1
                    self._cv.notify_all()
        except BaseException as exc:  # handed to the caller's thread by get()
            with self._cv:
                self._error = exc
                self._cv.notify_all()

    # ------------------------------------------------------------------ caller thread
    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"experience producer failed: {self._error}") from self._error

    def get(self, step: int) -> tuple[Experience, float]:
        """Step ``step``'s experience and the seconds the caller waited for it."""
        t0 = time.perf_counter()
        with self._cv:
            while step not in self._ready:
                self._raise_error()
                if self._next > step and not self._busy:
                    raise RuntimeError(f"experience for step {step} was never produced")
                self._cv.wait(timeout=1.0)
            exp = self._ready.pop(step)
            self._cv.notify_all()
        return exp, time.perf_counter() - t0

    def _wait_idle(self) -> None:
        while self._busy:
            self._raise_error()
            self._cv.wait(timeout=1.0)

    def sync_weights(self, version: int, sync: Callable[[], None]) -> float:
        """Run ``sync`` (which loads ``version`` on the rollout engine) once every step that
        the older versions generate is made and the producer is between steps; returns the
        seconds waited. Steps up to ``version + K`` use older versions (:func:`generation_version`),
        so with ``K = 1`` this waits for the next step's answers, which the caller needs next.
        """
        t0 = time.perf_counter()
        done_before = min(version + self.K, self.last_step) + 1
        with self._cv:
            self._pause += 1
            while self._busy or self._next < done_before:
                self._raise_error()
                self._pause -= 1  # let the producer make the steps the old version owes
                self._cv.notify_all()
                self._cv.wait(timeout=1.0)
                self._pause += 1
        waited = time.perf_counter() - t0
        try:
            sync()
        finally:
            with self._cv:
                self._version = version
                self._pause -= 1
                self._cv.notify_all()
        return waited

    def paused(self) -> _Paused:
        """``with experience.paused():`` the rollout engine is the caller's (no generation)."""
        return _Paused(self)

    def in_flight(self) -> list[Experience]:
        """Steps made but not yet handed out, after letting the one being made finish (a
        checkpoint saves them: they came from policies a resume no longer has)."""
        with self._cv:
            self._pause += 1
            self._wait_idle()
            ready = [self._ready[s] for s in sorted(self._ready)]
            self._pause -= 1
            self._cv.notify_all()
        return ready

    def take_idle(self) -> float:
        with self._cv:
            idle, self.generator_idle_s = self.generator_idle_s, 0.0
        return idle

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=600)


class _Paused:
    def __init__(self, owner: AsyncExperience) -> None:
        self.owner = owner

    def __enter__(self) -> None:
        with self.owner._cv:
            self.owner._pause += 1
            self.owner._wait_idle()

    def __exit__(self, *exc: object) -> None:
        with self.owner._cv:
            self.owner._pause -= 1
            self.owner._cv.notify_all()
