"""The policy updater on the tiny policy under real DeepSpeed ZeRO-3 (one rank, in process):
micro-batching covers every row once with the same count on every rank, the normaliser is the
loss denominator, epochs make mini_batches x epochs optimizer updates that move the policy,
and the update does not depend on the micro-batching. (1 vs 2 ranks through the trainer:
``tests/e2e/test_update_invariance.py``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from strace_ds.config import TrainConfig
from strace_ds.distributed import init_distributed
from strace_ds.losses import loss_denominator
from strace_ds.model.batch import collate_rollouts
from strace_ds.rollout.base import Generation
from strace_ds.train.experience import Experience
from strace_ds.train.setup import build_policy_engine
from strace_ds.train.updater import PolicyUpdater

REPO = Path(__file__).resolve().parents[2]


def _experience(n_prompts: int = 4, group: int = 4, seed: int = 0) -> Experience:
    """Random answers of mixed lengths to random prompts, with random rewards."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 200, (int(torch.randint(3, 9, (1,), generator=g)),),
                             generator=g).tolist() for _ in range(n_prompts)]  # fmt: skip
    rows = n_prompts * group
    answers = [torch.randint(5, 200, (int(torch.randint(1, 13, (1,), generator=g)),),
                             generator=g).tolist() for _ in range(rows)]  # fmt: skip
    gen = Generation(prompt_index=[i // group for i in range(rows)], token_ids=answers,
                     logprobs=[[-2.0] * len(a) for a in answers], finish_reasons=["stop"] * rows,
                     weight_version=0)  # fmt: skip
    rewards = torch.randint(0, 2, (rows,), generator=g).float()
    adv = (rewards - rewards.view(-1, group).mean(1).repeat_interleave(group))
    return Experience(
        step=1, weight_version=0, indices=list(range(n_prompts)),
        batch=collate_rollouts(prompts, gen, pad_token_id=0), rewards=rewards, correct=rewards,
        advantages=adv, loss_rows=torch.ones(rows, dtype=torch.bool),
        lengths=torch.tensor([float(len(a)) for a in answers]), truncated=[False] * rows,
        zero_variance_frac=0.0, texts=[""] * rows, golds=[""] * rows,
    )  # fmt: skip


def _updater(tiny_policy: Path, **overrides) -> PolicyUpdater:
    init_distributed()
    cfg = TrainConfig(**{"prompts_per_step": 4, "group_size": 4, "mini_batches": 2,
                         "micro_batch_size": 8, "lr": 1e-3, "loss": "s_trace",
                         "ds_config": str(REPO / "ds_configs" / "zero3.json"), **overrides})
    engine = build_policy_engine(cfg.optim, cfg.ds_config, cfg.layout(1), str(tiny_policy)).engine
    return PolicyUpdater(engine, cfg.objective, cfg.optim, cfg.rollouts, cfg.layout(1), cfg.seed)


def _full_params(updater: PolicyUpdater) -> torch.Tensor:
    import deepspeed

    params = list(updater.engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        return torch.cat([p.detach().flatten().clone() for p in params])


def test_micro_batches_cover_every_row_once(tiny_policy) -> None:
    updater = _updater(tiny_policy, max_tokens_per_micro_batch=40)
    exp = _experience()
    rows = torch.arange(len(exp))
    parts = updater.micro_batches(exp.batch, rows, updater.token_budget(exp.batch))
    covered = sorted(int(i) for p in parts for i in torch.arange(len(exp))[p])
    assert covered == list(range(len(exp)))
    lengths = exp.batch.attention_mask.sum(1)
    for p in parts:  # within the budget, or a single row longer than it
        assert len(lengths[p]) * int(lengths[p].max()) <= 40 or len(lengths[p]) == 1
    fixed = updater.micro_batches(exp.batch, rows, None)
    assert fixed == [slice(0, 8), slice(8, 16)]
    assert updater.token_budget(exp.batch) == 40
    auto = _updater(tiny_policy)
    assert auto.token_budget(exp.batch) == 8 * exp.batch.input_ids.shape[1]


def test_epochs_make_that_many_updates_and_move_the_policy(tiny_policy) -> None:
    updater = _updater(tiny_policy, epochs=3)
    exp = _experience()
    before = _full_params(updater)
    updater.prepare(exp)
    rows = torch.arange(8)
    mask = exp.loss_tokens[rows]
    want = loss_denominator(mask, updater.trace_cfg.loss_agg, 40, exp.loss_rows[rows])
    assert updater.global_normalizer(exp, rows) == max(float(want), 1.0)
    metrics, last = updater.update(exp, step=1)
    assert updater.engine.global_steps == 2 * 3
    assert len(metrics["policy/lr"]) == 6 and 0 <= metrics["perf/pad_frac"][0] < 1
    assert float((_full_params(updater) - before).norm()) > 0
    assert last["logp"].shape[1] <= exp.batch.response_ids.shape[1]  # padding trimmed


@pytest.mark.parametrize("budget", [0, 40])
def test_the_update_does_not_depend_on_the_micro_batching(tiny_policy, budget) -> None:
    from update_probe import capture_update_gradients

    exp = _experience(seed=1)
    results = []
    for micro, tokens in ((16, 0), (2, budget)):
        # A small step: the second update's ratios stay inside the clip (else no gradient).
        updater = _updater(tiny_policy, micro_batch_size=micro, max_tokens_per_micro_batch=tokens,
                           lr=1e-5)
        grads = capture_update_gradients(updater.engine)
        updater.update(updater.prepare(exp), step=1)
        assert len(grads) == 2
        results.append(grads)
    for got, want in zip(results[1], results[0]):
        assert float(want.norm()) > 1e-4
        rel = float((got - want).norm() / want.norm())
        assert rel < 1e-5, rel


@pytest.mark.parametrize(("loss", "mini_batches", "epochs", "budget"),
                         [("grpo", 2, 2, 0), ("grpo", 1, 2, 40), ("p_trace", 2, 1, 0)])
def test_first_update_takes_its_proximal_logprobs_from_its_own_forward(
    tiny_policy, loss, mini_batches, epochs, budget
) -> None:
    """Without entropy selection the first update's rows are not scored (PolicyUpdater.
    proximal_from_update): the same updates and the same proximal log-probs as scoring every
    row first, with one forward per row fewer."""
    from update_probe import capture_update_gradients

    exp_rows = len(_experience())
    results = []
    for reuse in (False, True):
        updater = _updater(tiny_policy, loss=loss, mini_batches=mini_batches, epochs=epochs,
                           max_tokens_per_micro_batch=budget, lr=1e-5)
        updater.reuse_first_forward = reuse
        assert updater.proximal_from_update() == reuse
        grads = capture_update_gradients(updater.engine)
        scored: list[int] = []
        score = updater._score_with

        def counting(model, batch, with_entropy, rows=None, score=score, scored=scored):
            scored.append(len(batch) if rows is None else len(rows))
            return score(model, batch, with_entropy, rows=rows)

        updater._score_with = counting
        exp = updater.prepare(_experience(seed=2))
        pending = exp.proximal_pending
        assert not exp.old_logprobs.requires_grad  # scored without a graph
        if reuse:  # the first mini-batch's rows wait for their forward, unscored (still 0)
            assert pending is not None and int(pending.sum()) == exp_rows // mini_batches
            assert float(exp.old_logprobs[pending].abs().sum()) == 0.0
        else:
            assert pending is None
        updater.update(exp, step=1)
        assert exp.proximal_pending is None
        assert scored == [exp_rows - exp_rows // mini_batches if reuse else exp_rows]
        assert len(grads) == mini_batches * epochs
        results.append((grads, exp.old_logprobs.clone()))
    (want_grads, want_old), (got_grads, got_old) = results
    torch.testing.assert_close(got_old, want_old, rtol=0, atol=1e-5)
    for got, want in zip(got_grads, want_grads):
        assert float(want.norm()) > 1e-4
        rel = float((got - want).norm() / want.norm())
        assert rel < 1e-5, rel


def test_entropy_selection_and_corrections_still_score_every_row(tiny_policy) -> None:
    assert not _updater(tiny_policy, loss="s_trace").proximal_from_update()
    assert not _updater(tiny_policy, loss="grpo",
                        behaviour_correction="token").proximal_from_update()
    assert not _updater(tiny_policy, loss="grpo", old_logprobs="rollout").proximal_from_update()


@pytest.mark.parametrize(("loss", "budget"), [("s_trace", 0), ("grpo", 40)])
def test_packed_micro_batches_make_the_padded_update(tiny_policy, loss, budget) -> None:
    """``--pack_micro_batches``: the same proximal log-probs and updates as padded micro-batches
    (scoring and training forwards both packed), with less padding computed."""
    from update_probe import capture_update_gradients

    results = []
    for packed in (False, True):
        updater = _updater(tiny_policy, loss=loss, micro_batch_size=8, lr=1e-5,
                           max_tokens_per_micro_batch=budget, pack_micro_batches=packed)
        grads = capture_update_gradients(updater.engine)
        exp = updater.prepare(_experience(seed=4))
        collected, _ = updater.update(exp, step=1)
        assert len(grads) == 2
        old = exp.old_logprobs[exp.batch.response_mask]  # padding: 0 packed, unused padded
        results.append((grads, old, collected["perf/pad_frac"][0]))
    (want_grads, want_old, padded_frac), (got_grads, got_old, packed_frac) = results
    torch.testing.assert_close(got_old, want_old, rtol=0, atol=1e-5)
    for got, want in zip(got_grads, want_grads):
        assert float(want.norm()) > 1e-4
        rel = float((got - want).norm() / want.norm())
        assert rel < 1e-5, rel
    # Rows share bins in fixed micro-batches of 8; under the 40-token budget a bin holds about
    # one row, which is what the unpacked layout (one row per bin) computes too.
    assert packed_frac < padded_frac if budget == 0 else packed_frac <= padded_frac
