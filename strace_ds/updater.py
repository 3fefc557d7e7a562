"""The policy updater: proximal log-probs, the step's selection, and the trace-loss updates.

One step of the updater, given one rank's :class:`~strace_ds.experience.Experience`::

    score (no grad, eval mode) -> proximal log-probs (+ entropies for the selection)
    selection: one entropy quantile over all ranks' loss tokens
    for epoch in epochs: for mini-batch (shuffled after the first epoch):
        global normaliser (all ranks) -> micro-batches: forward -> policy_loss -> backward
        -> engine.step (DeepSpeed: one optimizer update per mini-batch)

Everything here is collective: every rank calls the same methods in the same order.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from strace_ds import distributed as dist_utils
from strace_ds.advantages import group_advantages
from strace_ds.losses import (
    behaviour_weights,
    entropy_threshold,
    kl_penalty,
    loss_denominator,
    policy_loss,
    select_tokens,
    sequence_kl_penalty,
)
from strace_ds.rollout_batch import RolloutBatch, answer_logprobs

__all__ = ["PolicyUpdater", "StepBatch", "epoch_mini_batches"]


@dataclass
class StepBatch:
    """One rank's rollouts of one step, with everything the updates need."""

    batch: RolloutBatch
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    loss_rows: torch.Tensor  # [N] bool, rows that enter the loss (overlong/filter masks)
    old_logprobs: torch.Tensor  # [N, R] proximal policy (the ratio's denominator)
    texts: list[str]
    golds: list[str]
    selected: torch.Tensor | None = None  # [N, R] bool, the step's selection (S-trace, 80/20)
    entropy_threshold: float = math.nan  # its tau, over all ranks' loss tokens
    behaviour_weight: torch.Tensor | None = None  # [N, R] detached, --behaviour_correction
    behaviour_metrics: dict[str, float] | None = None
    ref_logprobs: torch.Tensor | None = None  # [N, R] the frozen reference (--kl_coef > 0)
    kl_metrics: dict[str, float] | None = None  # --kl_in reward: policy/kl_ref

    @property
    def loss_tokens(self) -> torch.Tensor:
        """``[N, R]`` bool: the valid answer tokens of the rows that enter the loss."""
        return self.batch.response_mask & self.loss_rows.unsqueeze(-1)


def epoch_mini_batches(
    n_rows: int,
    mini_batches: int,
    group_size: int,
    epoch: int,
    seed: int,
    offset: int | None = 0,
) -> list[torch.Tensor]:
    """Row indices of each of the epoch's mini-batches on one rank.

    The rank's rows are ``mini_batches`` consecutive chunks of ``share`` groups: its slice of
    global chunk j (:func:`strace_ds.experience.prompt_positions`), whose local position ``i``
    is global position ``offset + i`` of the chunk. Epoch 0 keeps the chunks. Later epochs move
    whole groups between mini-batches: the group at global position ``p`` of chunk ``c`` goes
    to mini-batch ``perm_p^{-1}(c)`` of a permutation of the chunks drawn for ``(seed, epoch,
    p)``. Every rank holds the same positions of every chunk, so each builds its part of the
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
        gen = torch.Generator().manual_seed(_seed(seed, epoch, -1))
        order = torch.randperm(n_rows, generator=gen)
        return [order[j * mini : (j + 1) * mini] for j in range(mini_batches)]
    members: list[list[int]] = [[] for _ in range(mini_batches)]
    for i in range(share):
        gen = torch.Generator().manual_seed(_seed(seed, epoch, offset + i))
        perm = torch.randperm(mini_batches, generator=gen).tolist()
        for j in range(mini_batches):
            members[j].append(perm[j] * share + i)  # chunk perm[j], position i
    return [rows_of(m) for m in members]


def _seed(seed: int, epoch: int, position: int) -> int:
    digest = hashlib.sha256(f"{seed}/epoch{epoch}/{position}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class PolicyUpdater:
    """Scores and updates the DeepSpeed-wrapped policy with the run's trace loss."""

    def __init__(
        self, engine: Any, cfg: Any, trace_cfg: Any, rank: int, world: int,
        reference: Any = None,
    ) -> None:  # fmt: skip
        self.engine, self.cfg, self.trace_cfg = engine, cfg, trace_cfg
        self.rank, self.world = rank, world
        self.reference = reference  # frozen engine for the KL penalty, or None

    @property
    def micro_batch_size(self) -> int:
        return self.cfg.micro_batches_per_update(self.world)[0]

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Proximal log-probs ``[N, R]``, and entropies when the preset selects tokens."""
        micro = self.micro_batch_size
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

    @torch.no_grad()
    def score_reference(self, batch: RolloutBatch) -> torch.Tensor:
        """Log-probs ``[N, R]`` of the answers under the frozen reference policy."""
        micro = self.micro_batch_size
        parts = [
            answer_logprobs(
                self.reference, batch.rows(slice(lo, lo + micro)), self.cfg.temperature,
                self.cfg.logprob_chunk_size, with_entropy=False,
            )[0].float().cpu()
            for lo in range(0, len(batch), micro)
        ]  # fmt: skip
        return torch.cat(parts)

    def prepare(self, exp: Any) -> StepBatch:
        """The step's :class:`StepBatch`: proximal log-probs, the step's selection and the
        behaviour weights (``docs/ALGORITHMS.md``, "Three policies").

        ``--old_logprobs rollout`` takes the behaviour log-probs as the proximal ones (every
        behaviour correction is then 1); the scoring forward still runs when the preset
        selects by entropy, for the entropies alone.
        """
        cfg, tc = self.cfg, self.trace_cfg
        behaviour = exp.batch.rollout_logprobs
        if cfg.old_logprobs == "rollout":
            old = behaviour.clone()
            entropy = self.score(exp.batch)[1] if tc.uses_entropy else None
        else:
            old, entropy = self.score(exp.batch)
        sb = StepBatch(
            exp.batch, exp.rewards, exp.advantages, exp.loss_rows, old, exp.texts, exp.golds
        )
        sb.selected, sb.entropy_threshold = self.selection(sb, entropy)
        if self.reference is not None:
            sb.ref_logprobs = self.score_reference(exp.batch)
            if cfg.kl_in == "reward":
                # The penalty joins the reward before the group baseline: advantages again,
                # the loss rows (overlong, zero-variance filter) as the verifier decided them.
                kl = kl_penalty(old, sb.ref_logprobs, cfg.kl_estimator)
                penalty, sb.kl_metrics = sequence_kl_penalty(kl, sb.loss_tokens, cfg.kl_coef)
                sb.advantages = group_advantages(
                    exp.rewards - penalty, cfg.group_size, method=cfg.advantage
                ).advantages.float()
        if cfg.behaviour_correction != "none":
            sb.behaviour_weight, sb.behaviour_metrics = behaviour_weights(
                old, behaviour, exp.batch.response_mask, cfg.behaviour_correction,
                cap=cfg.behaviour_cap, mode=cfg.behaviour_mode, lam=tc.lam,
                selected=sb.selected, window=tc.window, loss_mask=sb.loss_tokens,
            )  # fmt: skip
        return sb

    def selection(
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

    # ------------------------------------------------------------------ updates
    def mini_batches(self, n_rows: int, epoch: int, step: int) -> list[torch.Tensor]:
        """This rank's rows of each mini-batch of ``epoch`` (see :func:`epoch_mini_batches`)."""
        cfg = self.cfg
        aligned = cfg.prompts_per_step % (cfg.mini_batches * self.world) == 0
        share = cfg.prompts_per_step // cfg.mini_batches // self.world
        return epoch_mini_batches(
            n_rows, cfg.mini_batches, cfg.group_size, epoch,
            seed=cfg.seed * 1_000_003 + step, offset=self.rank * share if aligned else None,
        )  # fmt: skip

    def update(self, sb: StepBatch, step: int = 1) -> tuple[dict[str, list[float]], dict[str, Any]]:
        """``epochs`` passes over the step's rows, one optimizer update per mini-batch."""
        cfg, tc = self.cfg, self.trace_cfg
        micro = self.micro_batch_size
        collected: dict[str, list[float]] = defaultdict(list)
        last: dict[str, Any] = {}
        device = self.engine.device
        for epoch in range(cfg.epochs):
            for rows in self.mini_batches(len(sb.batch), epoch, step):
                normalizer = self.global_normalizer(sb, rows)
                lr = float(self.engine.get_lr()[0])  # before engine.step advances the schedule
                for lo in range(0, len(rows), micro):
                    r = rows[lo : lo + micro]
                    if epoch == 0:  # contiguous: a slice keeps today's exact arithmetic
                        r = slice(int(r[0]), int(r[-1]) + 1)
                    part = sb.batch.rows(r)
                    logp, entropy = answer_logprobs(
                        self.engine, part, cfg.temperature, cfg.logprob_chunk_size,
                        with_entropy=True,
                    )  # fmt: skip
                    mask = sb.loss_tokens[r].to(device)
                    selected = None if sb.selected is None else sb.selected[r].to(device)
                    weight = sb.behaviour_weight
                    kl_loss = sb.ref_logprobs is not None and cfg.kl_in == "loss"
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
                        behaviour_weight=None if weight is None else weight[r].to(device),
                        ref_logprobs=sb.ref_logprobs[r].to(device) if kl_loss else None,
                        kl_coef=cfg.kl_coef if kl_loss else 0.0,
                        kl_estimator=cfg.kl_estimator,
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
                collected["policy/grad_norm"].append(
                    float(self.engine.get_global_grad_norm() or 0.0)
                )
                collected["policy/lr"].append(lr)
        for k, v in {**(sb.behaviour_metrics or {}), **(sb.kl_metrics or {})}.items():
            collected[k] = [v]
        if sb.selected is not None:
            # The step's one selection: its threshold and exact share over all ranks.
            n_sel, n_valid = dist_utils.all_reduce_sum(
                [float(sb.selected.sum()), float(sb.loss_tokens.sum())]
            )
            collected["select/entropy_threshold"] = [sb.entropy_threshold]
            collected["select/frac"] = [n_sel / n_valid if n_valid else math.nan]
        return collected, last

    def global_normalizer(self, sb: StepBatch, rows: torch.Tensor | slice) -> float:
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
