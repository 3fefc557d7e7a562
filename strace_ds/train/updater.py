"""The policy updater: proximal log-probs, the step's selection, and the trace-loss updates.

One step of the updater, given one rank's :class:`~strace_ds.train.experience.Experience`::

    score (no grad, eval mode) -> proximal log-probs (+ entropies for the selection), of every
        row but the first update's where nothing needs them before it (PolicyUpdater.prepare)
    selection: one entropy quantile over all ranks' loss tokens
    for epoch in epochs: for mini-batch (shuffled after the first epoch):
        global normaliser (all ranks) -> micro-batches: forward -> policy_loss -> backward
        -> engine.step (DeepSpeed: one optimizer update per mini-batch)

Everything here is collective: every rank calls the same methods in the same order.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch

from strace_ds import distributed as dist_utils
from strace_ds.losses import (
    behaviour_weights,
    entropy_threshold,
    kl_penalty,
    loss_denominator,
    policy_loss,
    select_tokens,
    sequence_kl_penalty,
)
from strace_ds.losses.advantages import group_advantages
from strace_ds.model.batch import RolloutBatch, row_lengths
from strace_ds.model.logprobs import answer_logprobs, packing_unsupported_reason
from strace_ds.model.packing import pack_rows
from strace_ds.seeding import step_seed
from strace_ds.train.experience import Experience
from strace_ds.train.layout import BatchLayout
from strace_ds.train.micro_batches import token_budget_micro_batches

if TYPE_CHECKING:
    from strace_ds.config import ObjectiveConfig, OptimConfig, RolloutConfig

__all__ = ["PolicyUpdater", "epoch_mini_batches", "resolve_old_logprobs"]


def resolve_old_logprobs(
    objective: ObjectiveConfig, rollouts: RolloutConfig, in_process: bool,
    rollout_dtype: torch.dtype | None, policy_dtype: torch.dtype,
) -> tuple[str, str]:  # fmt: skip
    """``--old_logprobs`` as the run uses it (``trainer`` or ``rollout``) and why.

    ``auto`` takes the rollout engine's log-probs as the proximal ones when they are the
    trainer's to rounding: the in-process engine (its copy is synced after every step, so at
    ``max_staleness`` 0 it samples with exactly the weights the step starts from, and it records
    ``log_softmax(logits / T)`` before any top-p/top-k) in float32 on both sides (measured on the
    tiny policy: at most 2e-5, mean 2e-7 apart per token; in bf16 the incremental decode and the
    full forward round differently by far more). Nothing is saved, and so nothing is changed,
    when the preset selects by entropy (the scoring forward runs for the entropies) or a
    behaviour correction is asked for (it measures exactly this gap).
    """
    choice = objective.old_logprobs
    if choice != "auto":
        return choice, "--old_logprobs " + choice
    trace = objective.trace_config()
    reasons = [
        (not in_process, "the rollout engine is not the in-process one"),
        (rollouts.max_staleness != 0, "answers may be stale (max_staleness > 0)"),
        (rollout_dtype != torch.float32 or policy_dtype != torch.float32,
         f"not float32 on both sides (rollout {rollout_dtype}, trainer {policy_dtype})"),
        (trace.uses_entropy, "the preset selects by entropy (the scoring forward runs anyway)"),
        (objective.behaviour_correction != "none", "a behaviour correction is asked for"),
    ]  # fmt: skip
    against = [why for failed, why in reasons if failed]
    if against:
        return "trainer", "auto: trainer, " + "; ".join(against)
    return "rollout", "auto: rollout (in-process engine, same weights, float32)"


def epoch_mini_batches(
    n_rows: int,
    mini_batches: int,
    group_size: int,
    epoch: int,
    seed: int,
    step: int,
    offset: int | None = 0,
) -> list[torch.Tensor]:
    """Row indices of each of the epoch's mini-batches on one rank.

    The rank's rows are ``mini_batches`` consecutive chunks of ``share`` groups: its slice of
    global chunk j (:func:`strace_ds.train.experience.prompt_positions`), whose local position ``i``
    is global position ``offset + i`` of the chunk. Epoch 0 keeps the chunks. Later epochs move
    whole groups between mini-batches: the group at global position ``p`` of chunk ``c`` goes
    to mini-batch ``perm_p^{-1}(c)`` of a permutation of the chunks drawn for ``(seed, step,
    epoch, p)``. Every rank holds the same positions of every chunk, so each builds its part of the
    new global mini-batches from its own rows and 1 and N ranks make the same updates.
    ``offset=None`` (prompts not a multiple of mini-batches x ranks): a local shuffle of
    the rank's rows, which depends on the rank count.
    """
    groups = n_rows // group_size
    share = groups // mini_batches  # groups of one chunk on this rank

    def rows_of(group_ids: list[int]) -> torch.Tensor:
        return torch.tensor(
            [g * group_size + i for g in group_ids for i in range(group_size)], dtype=torch.long
        )

    mini = n_rows // mini_batches
    if epoch == 0:
        return [torch.arange(j * mini, (j + 1) * mini) for j in range(mini_batches)]
    if offset is None or groups % mini_batches:
        # Not chunk-aligned (or a group split between mini-batches): shuffle the rank's rows.
        gen = torch.Generator().manual_seed(step_seed(seed, step, -1, f"epoch{epoch}"))
        order = torch.randperm(n_rows, generator=gen)
        return [order[j * mini : (j + 1) * mini] for j in range(mini_batches)]
    members: list[list[int]] = [[] for _ in range(mini_batches)]
    for i in range(share):
        gen = torch.Generator().manual_seed(step_seed(seed, step, offset + i, f"epoch{epoch}"))
        perm = torch.randperm(mini_batches, generator=gen).tolist()
        for j in range(mini_batches):
            members[j].append(perm[j] * share + i)  # chunk perm[j], position i
    return [rows_of(m) for m in members]


class PolicyUpdater:
    """Scores and updates the DeepSpeed-wrapped policy with the run's trace loss."""

    reuse_first_forward: bool = True
    """Take the first update's proximal log-probs from its own forward when nothing needs them
    earlier (:meth:`proximal_from_update`); False scores every row first. The two make the same
    update (``tests/integration/test_updater.py``); the switch is for that test."""

    def __init__(
        self, engine: Any, objective: ObjectiveConfig, optim: OptimConfig,
        rollouts: RolloutConfig, layout: BatchLayout, seed: int, rank: int = 0,
        reference: Any = None,
    ) -> None:  # fmt: skip
        """``rollouts`` gives the sampling temperature (the log-probs are the tempered
        policy's) and the answer cap (the loss normaliser's ``max_len``); ``layout`` the step's
        geometry; ``seed`` the run's (the later epochs' shuffles)."""
        self.engine, self.objective, self.optim = engine, objective, optim
        self.rollouts, self.layout, self.seed = rollouts, layout, seed
        self.trace_cfg = objective.trace_config()
        self.rank, self.world = rank, layout.world
        self.reference = reference  # frozen engine for the KL penalty, or None
        if optim.pack_micro_batches:
            for model in (engine, reference):
                reason = None if model is None else packing_unsupported_reason(model)
                if reason is not None:
                    raise ValueError(f"pack_micro_batches: {reason}; set it to false")

    @property
    def micro_batch_size(self) -> int:
        return self.layout.micro

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(
        self, batch: RolloutBatch, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Proximal log-probs ``[N, R]`` of ``rows`` (default all), and entropies when the
        preset selects tokens."""
        return self._score_with(self.engine, batch, self.trace_cfg.uses_entropy, rows=rows)

    @torch.no_grad()
    def score_reference(self, batch: RolloutBatch) -> torch.Tensor:
        """Log-probs ``[N, R]`` of the answers under the frozen reference policy."""
        return self._score_with(self.reference, batch, False)[0]

    def _score_with(
        self, model: Any, batch: RolloutBatch, with_entropy: bool,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """``model``'s log-probs (and entropies) of ``rows`` (default every row), in the
        updates' micro-batches (padding trimmed, zero-filled back to the batch's width; other
        rows stay 0)."""
        N, R = batch.response_ids.shape
        logps = torch.zeros(N, R)
        entropies = torch.zeros(N, R) if with_entropy else None
        if rows is not None and not len(rows):
            return logps, entropies  # the same on every rank: no forward, no collective
        model.eval()
        rows = torch.arange(N) if rows is None else rows
        for r in self.micro_batches(batch, rows, self.token_budget(batch)):
            index = rows[:1] if r is None else r
            part = batch.rows(index).trimmed()
            width = part.response_ids.shape[1]
            logp, entropy = answer_logprobs(
                model, part, self.rollouts.temperature, self.optim.logprob_chunk_size,
                with_entropy=with_entropy, fused=self.optim.fused_logprobs,
                packed=self.optim.pack_micro_batches,
            )  # fmt: skip
            if r is None:
                continue  # the zero pass every rank makes as often as the busiest one
            logps[index, :width] = logp.float().cpu()
            if entropies is not None and entropy is not None:
                entropies[index, :width] = entropy.float().cpu()
        if model is self.engine:
            model.train()
        return logps, entropies

    def prepare(self, exp: Experience) -> Experience:
        """Fill the updater's part of the step's :class:`Experience` (and return it): proximal
        log-probs, the step's selection, the behaviour weights (``docs/ALGORITHMS.md``,
        "Three policies"), the reference log-probs; with ``--kl_in reward`` the advantages
        are recomputed from the penalised rewards.

        ``--old_logprobs rollout`` takes the behaviour log-probs as the proximal ones (every
        behaviour correction is then 1); the scoring forward still runs when the preset
        selects by entropy, for the entropies alone. ``auto`` is resolved by the trainer, which
        knows the rollout engine (:func:`resolve_old_logprobs`); left unresolved it is
        ``trainer``.
        """
        cfg, tc = self.objective, self.trace_cfg
        behaviour = exp.batch.rollout_logprobs
        exp.proximal_pending = None
        if cfg.old_logprobs == "rollout":
            old = behaviour.clone()
            entropy = self.score(exp.batch)[1] if tc.uses_entropy else None
        elif self.proximal_from_update():
            first = self.mini_batches(len(exp.batch), 0, exp.step)[0]
            exp.proximal_pending = torch.zeros(len(exp.batch), dtype=torch.bool)
            exp.proximal_pending[first] = True
            rest = torch.nonzero(~exp.proximal_pending).flatten()
            old, entropy = self.score(exp.batch, rows=rest)
        else:
            old, entropy = self.score(exp.batch)
        exp.old_logprobs = old
        exp.selected, exp.entropy_threshold = self.selection(exp, entropy)
        if self.reference is not None:
            exp.ref_logprobs = self.score_reference(exp.batch)
            if cfg.kl_in == "reward":
                # The penalty joins the reward before the group baseline: advantages again,
                # the loss rows (overlong, zero-variance filter) as the verifier decided them.
                kl = kl_penalty(old, exp.ref_logprobs, cfg.kl_estimator)
                penalty, exp.kl_metrics = sequence_kl_penalty(kl, exp.loss_tokens, cfg.kl_coef)
                exp.advantages = group_advantages(
                    exp.rewards - penalty, self.layout.group_size, method=cfg.advantage
                ).advantages.float()
        if cfg.behaviour_correction != "none":
            exp.behaviour_weight, exp.behaviour_metrics = behaviour_weights(
                old, behaviour, exp.batch.response_mask, cfg.behaviour_correction,
                cap=cfg.behaviour_cap, mode=cfg.behaviour_mode, lam=tc.lam,
                selected=exp.selected, window=tc.window, loss_mask=exp.loss_tokens,
            )  # fmt: skip
        return exp

    def proximal_from_update(self) -> bool:
        """Whether the first update's rows skip the scoring pass.

        The proximal policy is the policy before the step's first update, so for the rows of
        that update (epoch 0, mini-batch 0) it is the very policy their training forward runs:
        their proximal log-probs are that forward's own, detached (the ratio is 1 in value, as
        scoring gives it, and the gradient the same), and the forward fills them into
        ``old_logprobs`` for the later epochs and the metrics. Every later mini-batch trains on
        weights that have moved, so its rows are scored before any update, as always. This
        holds when nothing needs the first update's proximal log-probs before its forward: no
        entropy selection (its quantile spans every row's entropy), no behaviour correction
        and no KL penalty in the reward (both computed from them in :meth:`prepare`).
        """
        cfg = self.objective
        return (
            self.reuse_first_forward and cfg.old_logprobs != "rollout"
            and not self.trace_cfg.uses_entropy and cfg.behaviour_correction == "none"
            and not (self.reference is not None and cfg.kl_in == "reward")
        )  # fmt: skip

    def selection(
        self, exp: Experience, entropy: torch.Tensor | None
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
        valid = exp.loss_tokens
        values = dist_utils.all_gather_cat(entropy[valid], device=self.engine.device)
        tau = entropy_threshold(values, q)
        selected, _ = select_tokens(valid, entropy, q, threshold=tau)
        return selected, tau

    # ------------------------------------------------------------------ updates
    def mini_batches(self, n_rows: int, epoch: int, step: int) -> list[torch.Tensor]:
        """This rank's rows of each mini-batch of ``epoch`` (see :func:`epoch_mini_batches`)."""
        layout = self.layout
        return epoch_mini_batches(
            n_rows, layout.mini_batches, layout.group_size, epoch, seed=self.seed, step=step,
            offset=layout.chunk_offset(self.rank),
        )  # fmt: skip

    # ------------------------------------------------------------------ micro-batches
    def token_budget(self, batch: RolloutBatch) -> int | None:
        """Token slots per micro-batch (``--max_tokens_per_micro_batch``), None for fixed
        ``micro_batch_size`` rows; auto = ``micro_batch_size`` x the step's padded row width."""
        budget = self.optim.max_tokens_per_micro_batch
        if budget == 0:
            return None
        return budget or self.micro_batch_size * batch.input_ids.shape[1]

    def micro_batches(
        self, batch: RolloutBatch, rows: torch.Tensor, budget: int | None
    ) -> list[torch.Tensor | slice | None]:
        """The micro-batches of ``rows``: fixed chunks of ``micro_batch_size`` rows, or rows
        grouped by length under the token ``budget``
        (:func:`strace_ds.train.micro_batches.token_budget_micro_batches`). Every rank returns as
        many as the rank with most (``None`` entries: a zero-loss pass), because ZeRO-3 gathers
        parameters in every forward and reduces gradients in every backward, collectively."""
        if budget is None:
            micro = self.micro_batch_size
            parts: list[torch.Tensor | slice | None] = []
            for lo in range(0, len(rows), micro):
                r = rows[lo : lo + micro]
                contiguous = bool((r[1:] - r[:-1] == 1).all())
                # A slice keeps the exact arithmetic of fixed micro-batches.
                parts.append(slice(int(r[0]), int(r[-1]) + 1) if contiguous else r)
            return parts
        lengths = row_lengths(batch)[rows].tolist()
        groups = token_budget_micro_batches(lengths, budget, packed=self.optim.pack_micro_batches)
        parts = [rows[torch.tensor(sorted(g))] for g in groups]
        (most,) = dist_utils.all_reduce_max([float(len(parts))])
        return parts + [None] * (int(most) - len(parts))

    # ------------------------------------------------------------------ updates
    def update(
        self, exp: Experience, step: int = 1
    ) -> tuple[dict[str, list[float]], dict[str, Any]]:
        """``epochs`` passes over the step's rows, one optimizer update per mini-batch."""
        collected: dict[str, list[float]] = defaultdict(list)
        last: dict[str, Any] = {}
        budget = self.token_budget(exp.batch)
        used = slots = 0
        for epoch in range(self.optim.epochs):
            for rows in self.mini_batches(len(exp.batch), epoch, step):
                normalizer = self.global_normalizer(exp, rows)
                lr = float(self.engine.get_lr()[0])  # before engine.step advances the schedule
                parts = self.micro_batches(exp.batch, rows, budget)
                for r in parts:
                    out, logp, entropy, mask, part_slots = self._micro_step(
                        exp, r, rows, normalizer
                    )
                    self.engine.backward(out.loss, scale_wrt_gas=False)
                    if r is None:
                        continue  # a zero-loss pass: nothing to report
                    for k, v in out.metrics.items():
                        collected[k].append(v)
                    collected["policy/loss"].append(out.loss.item() / self.world)
                    used += int(exp.batch.attention_mask[r].sum())
                    slots += part_slots
                    last = {
                        "logp": logp.detach().cpu(),
                        "entropy": entropy.cpu(),
                        "rows": r,
                        "ratio": out.trace_ratio.cpu(),
                        "loss_mask": out.loss_mask.cpu(),
                        "mask": mask.cpu(),
                    }
                # The boundary is ours (managed_gradient_accumulation off): one optimizer
                # update per mini-batch, however many micro-batches the budget made.
                self.engine.step()
                exp.proximal_pending = None  # the first update's forwards filled them
                collected["policy/grad_norm"].append(
                    float(self.engine.get_global_grad_norm() or 0.0)
                )
                collected["policy/lr"].append(lr)
        collected["perf/pad_frac"] = [1.0 - used / slots if slots else math.nan]
        for k, v in {**(exp.behaviour_metrics or {}), **(exp.kl_metrics or {})}.items():
            collected[k] = [v]
        if exp.selected is not None:
            # The step's one selection: its threshold and exact share over all ranks.
            n_sel, n_valid = dist_utils.all_reduce_sum(
                [float(exp.selected.sum()), float(exp.loss_tokens.sum())]
            )
            collected["select/entropy_threshold"] = [exp.entropy_threshold]
            collected["select/frac"] = [n_sel / n_valid if n_valid else math.nan]
        return collected, last

    def _micro_step(
        self, exp: Experience, r: torch.Tensor | slice | None, rows: torch.Tensor,
        normalizer: float,
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, int]:  # fmt: skip
        """Forward and loss of one micro-batch (and its token slots), its padding trimmed or
        packed away (``pack_micro_batches``); ``r=None``: the first row
        of the mini-batch with its loss multiplied by 0 (every parameter still gets its zero
        gradient, as ZeRO-3's collectives need)."""
        cfg, device = self.objective, self.engine.device
        index = rows[:1] if r is None else r
        part = exp.batch.rows(index).trimmed()
        R = part.response_ids.shape[1]
        # Laid out once: the forward's layout is also the slot count of perf/pad_frac.
        pack = pack_rows(part, share_bins=self.optim.pack_micro_batches)
        logp, entropy = answer_logprobs(
            self.engine, part, self.rollouts.temperature, self.optim.logprob_chunk_size,
            with_entropy=True, fused=self.optim.fused_logprobs, entropy_grad=cfg.entropy_coef > 0,
            packed=pack,
        )  # fmt: skip

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index][:, :R].to(device)

        old = take(exp.old_logprobs)
        if exp.proximal_pending is not None and bool(exp.proximal_pending[index].any()):
            # The first update's rows: this forward is the proximal policy's (prepare).
            assert bool(exp.proximal_pending[index].all()), "a micro-batch across mini-batches"
            old = logp.detach().float()
            if r is not None:
                exp.old_logprobs[index, :R] = old.cpu()
        mask = take(exp.loss_tokens)
        kl_loss = exp.ref_logprobs is not None and cfg.kl_in == "loss"
        out = policy_loss(
            logp,
            old,
            exp.advantages[index].to(device),
            mask,
            entropy=entropy,
            config=self.trace_cfg,
            max_len=self.rollouts.max_new_tokens,
            normalizer=normalizer,
            selected=take(exp.selected),
            behaviour_weight=take(exp.behaviour_weight),
            ref_logprobs=take(exp.ref_logprobs) if kl_loss else None,
            kl_coef=cfg.kl_coef if kl_loss else 0.0,
            kl_estimator=cfg.kl_estimator,
            entropy_coef=cfg.entropy_coef,
        )
        if r is None:
            out.loss = out.loss * 0.0
        return out, logp, entropy.detach(), mask, pack.slots

    def global_normalizer(self, exp: Experience, rows: torch.Tensor | slice) -> float:
        """Denominator of the mini-batch's loss over all ranks, divided by the world size.

        DeepSpeed averages gradients over ranks; dividing the global denominator by the world
        size makes the averaged gradient that of the global token (or sequence) mean. The
        count is :func:`loss_denominator`'s, over the same loss tokens ``policy_loss`` uses
        (the selected ones when the loss is on the selection only).
        """
        tc = self.trace_cfg
        mask = exp.loss_tokens[rows]
        if tc.loss_on_selected_only and exp.selected is not None:
            mask = mask & exp.selected[rows]
        local = loss_denominator(
            mask, tc.loss_agg, self.rollouts.max_new_tokens, exp.loss_rows[rows]
        )
        (total,) = dist_utils.all_reduce_sum([float(local)])
        return max(total, 1.0) / self.world
