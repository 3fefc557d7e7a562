"""Gradient variance and alignment of the loss presets at one policy checkpoint.

    from benchmarks.credit_gradients import gradient_probe, bootstrap_ci  # from the repo root
    res = gradient_probe("strace_ds/assets/tiny-qwen3", "synthetic", ["grpo", "s_trace"])

Part of the credit-assignment study (``benchmarks/credit_study.py``, phase ``grad``): does a
preset's policy gradient estimate the expected gradient with less noise, or point closer to it,
than GRPO's?

What is measured. ``2 * n_batches`` independent batches are sampled from the policy at
temperature 1, each ``prompts_per_batch`` distinct training problems x ``group_size`` answers,
graded by math-verify, with GRPO group advantages. Every preset sees the same answers. For a
preset and batch ``b`` the loss is exactly the trainer's first update of a step
(:class:`strace_ds.train.updater.PolicyUpdater`): the selection from the batch's entropies (one
quantile over its loss tokens), the token-count normaliser over the batch, ``policy_loss`` with
the preset's :class:`~strace_ds.losses.TraceConfig`, and on-policy old log-probs (the current
ones, detached), so every ratio is exactly 1, nothing is clipped, and ``g_b``, the flattened
gradient w.r.t. all parameters, is the preset's policy-gradient estimate from that batch.
With ``lam > 0`` the trace still changes it: the gradient of the trace ratio at token ``t``
spreads over the selected tokens up to ``t``, so credit is redistributed along the answer.

* ``rel_variance`` over the small batches ``b = 1..n`` (``gbar`` their mean)::

      mean_b ||g_b - gbar||^2 / ||gbar||^2

  the batch gradient's total variance (the 1/n plug-in estimate) in units of the squared
  norm of the mean gradient: a scale-free noise-to-signal ratio (scale-free matters, the
  presets' losses have different normalisers). Lower is better.
* ``cosine``: ``cos(g_b, G)`` for each small batch, with ``G`` the mean gradient of the
  *other* ``n`` batches, a large-batch estimate of the expected gradient. ``G`` is independent
  of the small batches on purpose: were ``g_b`` part of ``G``, the cosine would contain
  ``g_b``'s correlation with itself and be biased upwards, the more so the noisier ``g_b``
  (the preset we want to penalise). Independent, ``E[g_b . G] = ||E g||^2``, and a higher
  cosine means the small-batch step points closer to the expected one.
  A small batch with no signal at all (``g_b = 0``) counts as cosine 0: its step makes no
  progress.
* ``noise_to_signal``: ``tr Cov(g_b) / ||E g||^2`` from unbiased pieces, the small batches'
  sample variance (``1/(n-1)``) over ``gbar . G`` (independent halves, so its expectation is
  ``||E g||^2``). ``rel_variance`` estimates the same ratio but saturates: in expectation its
  numerator is ``(n-1)/n tr Cov`` and its denominator ``||E g||^2 + tr Cov / n``, so for
  noise-dominated gradients it tends to ``n - 1`` whatever the preset. Both are reported;
  prefer this one for comparisons when the gradients are noisy. NaN when ``gbar . G <= 0``.
* ``grad_norm_mean``: mean ``||g_b||`` over the small batches; ``informative_groups_frac``:
  the share of groups (all batches) that reach the preset's loss, i.e. rewards not all equal
  and at least one loss token (GRPO gives a silent group ``A = 0`` exactly).

A preset whose batches carry no signal at all (``gbar = 0`` or ``G = 0``) gets NaN figures.
:func:`bootstrap_ci` is the percentile bootstrap every interval of the study uses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from strace_ds.data.prompts import build_prompt_ids
from strace_ds.data.tasks import generated_dataset
from strace_ds.losses import (
    FORMS,
    PRESETS,
    TraceConfig,
    entropy_threshold,
    loss_denominator,
    policy_loss,
    select_tokens,
)
from strace_ds.losses.advantages import group_advantages
from strace_ds.model.batch import RolloutBatch, collate_rollouts
from strace_ds.model.logprobs import answer_logprobs
from strace_ds.rewards.registry import math_verify_reward
from strace_ds.rollout import SamplingParams
from strace_ds.rollout.hf import HFRolloutEngine
from strace_ds.train.experience import step_seed

__all__ = [
    "GradBatch",
    "batch_gradients",
    "bootstrap_ci",
    "draw_batches",
    "gradient_probe",
    "gradient_stats",
    "load_policy",
]


@dataclass
class GradBatch:
    """One sampled, graded batch of ``prompts x group_size`` answers."""

    batch: RolloutBatch
    rewards: torch.Tensor  # [N] the verifier's 0/1
    advantages: torch.Tensor  # [N] GRPO group advantages
    informative: torch.Tensor  # [P] bool, the group's rewards are not all equal
    group_size: int


def load_policy(model_dir: str) -> tuple[Any, Any]:
    """The float32 causal LM at ``model_dir`` (dropout off, no KV cache, as the trainer's)
    and its tokenizer (pad = EOS when it has none)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from strace_ds.train import dropout
    from strace_ds.train.setup import load_tokenizer

    config = AutoConfig.from_pretrained(model_dir)
    dropout.disable_dropout(config)
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=torch.float32)
    dropout.disable_dropout_modules(model)
    model.config.use_cache = False
    return model.eval(), load_tokenizer(model_dir)


def draw_batches(
    model: Any, tokenizer: Any, task: str, n: int, prompts_per_batch: int, group_size: int,
    max_new_tokens: int, seed: int = 0,
) -> list[GradBatch]:  # fmt: skip
    """``n`` independent batches: distinct problems of ``task``'s train split (drawn with
    ``seed``), ``group_size`` answers each sampled at temperature 1 by the in-process rollout
    engine (its own eval-mode copy of ``model``; seed per batch), graded by math-verify."""
    data = generated_dataset(task, "train", n * prompts_per_batch, seed)
    # Generated tasks' prompts carry their instruction: append none (builders.run_instruction).
    prompt_ids = [build_prompt_ids(tokenizer, ex.prompt, "") for ex in data.examples]
    engine = HFRolloutEngine(
        model, tokenizer=tokenizer, dtype=torch.float32,
        max_batch_size=prompts_per_batch * group_size,
    )  # fmt: skip
    out = []
    try:
        for b in range(n):
            rows = range(b * prompts_per_batch, (b + 1) * prompts_per_batch)
            prompts = [prompt_ids[i] for i in rows]
            sampling = SamplingParams(
                max_new_tokens=max_new_tokens, temperature=1.0,
                seed=step_seed(seed, b, 0, "credit_gradients"),
            )  # fmt: skip
            gen = engine.generate(prompts, n=group_size, sampling=sampling)
            texts = tokenizer.batch_decode(gen.token_ids, skip_special_tokens=True)
            examples = [data.examples[rows[i]] for i in gen.prompt_index]
            rewards = torch.tensor(
                [math_verify_reward(t, ex.answer, dict(ex.meta)) for t, ex in zip(texts, examples)],
                dtype=torch.float32,
            )
            adv = group_advantages(rewards, group_size, method="grpo")
            out.append(GradBatch(
                batch=collate_rollouts(prompts, gen, tokenizer.pad_token_id),
                rewards=rewards, advantages=adv.advantages.float(),
                informative=~adv.zero_variance_mask, group_size=group_size,
            ))  # fmt: skip
    finally:
        engine.close()
    return out


def _loss_inputs(
    gb: GradBatch, entropy: torch.Tensor, tc: TraceConfig, max_new_tokens: int
) -> tuple[torch.Tensor | None, float, torch.Tensor]:
    """The updater's selection (one quantile over the batch's loss tokens), its normaliser
    (one rank, the whole batch one mini-batch) and the loss mask, for preset ``tc``."""
    valid = gb.batch.response_mask  # every row enters the loss: no overlong/filter masks
    selected = None
    if tc.entropy_top_quantile is not None:
        tau = entropy_threshold(entropy[valid], tc.entropy_top_quantile)
        selected, _ = select_tokens(valid, entropy, tc.entropy_top_quantile, threshold=tau)
    mask = valid & selected if tc.loss_on_selected_only and selected is not None else valid
    rows = torch.ones(len(gb.batch), dtype=torch.bool)
    normalizer = max(float(loss_denominator(mask, tc.loss_agg, max_new_tokens, rows)), 1.0)
    return selected, normalizer, mask


def batch_gradients(
    model: Any, gb: GradBatch, configs: dict[str, TraceConfig], max_new_tokens: int
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Flattened float32 gradient of each preset's on-policy loss on ``gb`` (one forward,
    one backward per preset), and the number of groups that reach each preset's loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()  # as the updater's updates (dropout is off: the same network as eval)
    batch = gb.batch
    logp, entropy = answer_logprobs(model, batch, 1.0, 0, with_entropy=True, fused=True)
    assert entropy is not None
    grads, reached = {}, {}
    names = list(configs)
    for k, name in enumerate(names):
        tc = configs[name]
        selected, normalizer, mask = _loss_inputs(gb, entropy, tc, max_new_tokens)
        out = policy_loss(
            logp, logp.detach(), gb.advantages, batch.response_mask, entropy=entropy,
            config=tc, max_len=max_new_tokens, normalizer=normalizer, selected=selected,
        )  # fmt: skip
        g = torch.autograd.grad(
            out.loss, params, retain_graph=k < len(names) - 1, allow_unused=True
        )
        grads[name] = torch.cat([
            (torch.zeros_like(p) if gi is None else gi).detach().float().flatten()
            for p, gi in zip(params, g)
        ])  # fmt: skip
        has_tokens = mask.view(-1, gb.group_size, mask.shape[1]).any(dim=(1, 2))
        reached[name] = int((has_tokens & gb.informative).sum())
    model.eval()
    return grads, reached


def gradient_stats(small: Sequence[torch.Tensor], large: Sequence[torch.Tensor]) -> dict:
    """``rel_variance``, ``cosine`` (each small batch to the large batches' mean),
    ``cosine_mean`` and ``grad_norm_mean`` of flattened gradients (float64 arithmetic)."""
    S = torch.stack([g.double() for g in small])  # [n, D]
    G = torch.stack([g.double() for g in large]).mean(dim=0)  # [D]
    gbar = S.mean(dim=0)
    gbar_sq = float(gbar.square().sum())
    spread = float((S - gbar).square().sum(dim=1).mean())
    norms = S.norm(dim=1)
    G_norm = float(G.norm())
    n = len(S)
    if G_norm > 0:  # a batch without signal (g_b = 0) makes no progress: cosine 0
        cos = [float(S[b] @ G) / (float(norms[b]) * G_norm) if norms[b] > 0 else 0.0
               for b in range(n)]  # fmt: skip
    else:
        cos = [math.nan] * n
    signal = float(gbar @ G)  # E = ||E g||^2: the two halves are independent
    trace = spread * n / (n - 1)  # E = tr Cov(g_b)
    return {
        "rel_variance": spread / gbar_sq if gbar_sq > 0 else math.nan,
        "noise_to_signal": trace / signal if signal > 0 else math.nan,
        "cosine": cos,
        "cosine_mean": float(np.mean(cos)),
        "grad_norm_mean": float(norms.mean()),
    }


def method_config(method: str) -> TraceConfig:
    """``preset`` or ``preset@form`` (a trace preset in another form) -> its ``TraceConfig``."""
    preset, _, form = method.partition("@")
    if preset not in PRESETS or (form and form not in FORMS):
        raise ValueError(f"{method!r} is not a preset ({', '.join(PRESETS)}) or preset@form "
                         f"with a form among {', '.join(FORMS)}")
    return TraceConfig.preset(preset, **({"form": form} if form else {}))


def gradient_probe(
    model_dir: str,
    task: str,
    presets: list[str],
    n_batches: int = 8,
    prompts_per_batch: int = 8,
    group_size: int = 8,
    max_new_tokens: int = 160,
    seed: int = 0,
) -> dict:
    """Gradient variance and cosine to an independent large-batch gradient of each preset
    (module docstring) at the checkpoint ``model_dir`` on generated task ``task``.

    Returns a JSON-able dict: the arguments, ``reward_mean`` over all sampled answers,
    ``seconds`` (wall time) and ``presets``: ``{name: {rel_variance, noise_to_signal, cosine (one
    per small batch), cosine_mean, grad_norm_mean, informative_groups_frac}}``.
    """
    if n_batches < 2:
        raise ValueError(f"gradient_probe: n_batches must be >= 2, got {n_batches}")
    configs = {name: method_config(name) for name in presets}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        model, tokenizer = load_policy(model_dir)
        batches = draw_batches(model, tokenizer, task, 2 * n_batches, prompts_per_batch,
                               group_size, max_new_tokens, seed)  # fmt: skip
        grads: dict[str, list[torch.Tensor]] = {name: [] for name in presets}
        reached = dict.fromkeys(presets, 0)
        for gb in batches:
            g, r = batch_gradients(model, gb, configs, max_new_tokens)
            for name in presets:
                grads[name].append(g[name])
                reached[name] += r[name]
    finally:
        torch.set_num_threads(threads)
    n_groups = 2 * n_batches * prompts_per_batch
    result = {}
    for name in presets:
        stats = gradient_stats(grads[name][:n_batches], grads[name][n_batches:])
        result[name] = {**stats, "informative_groups_frac": reached[name] / n_groups}
    return {
        "model_dir": str(model_dir),
        "task": task,
        "n_batches": n_batches,
        "prompts_per_batch": prompts_per_batch,
        "group_size": group_size,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "reward_mean": float(torch.cat([gb.rewards for gb in batches]).mean()),
        "seconds": time.perf_counter() - t0,
        "presets": result,
    }


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, seed: int = 0,
    stat: Callable[[np.ndarray], float] = np.mean,
) -> tuple[float, float, float]:  # fmt: skip
    """``(stat(values), lo, hi)``: the statistic and its percentile-bootstrap 95% interval
    (2.5th and 97.5th percentiles of ``stat`` over ``n_boot`` resamples with replacement,
    seeded). One value gives ``(v, v, v)``, none ``(nan, nan, nan)``; a NaN propagates."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    point = float(stat(x))
    if x.size == 1:
        return point, point, point
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    if stat is np.mean:
        boots = x[idx].mean(axis=1)
    else:
        boots = np.array([stat(x[i]) for i in idx], dtype=float)
    if np.isnan(boots).any():
        return point, math.nan, math.nan
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return point, float(lo), float(hi)
