"""The experience producer's schedule: which weight version makes which step, the staleness
bound, weight sync between steps, pauses, in-flight batches and failures (no model needed:
a scripted producer records the version the rollout engine held when it made each step)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from helpers.experience import _experience

from strace_ds.train.experience import (
    AsyncExperience,
    Experience,
    StalenessError,
    check_staleness,
    generation_version,
    prompt_positions,
)


class ScriptedProducer:
    """Makes step t's experience stamped with the engine's current version, slowly."""

    def __init__(self, delay_s: float = 0.01, fail_at: int | None = None) -> None:
        self.engine_version = 0
        self.made: list[tuple[int, int]] = []  # (step, version used)
        self.delay_s, self.fail_at = delay_s, fail_at
        self.generating = threading.Event()

    def produce(self, step: int) -> Experience:
        if step == self.fail_at:
            raise ValueError(f"grader exploded at step {step}")
        self.generating.set()
        version = self.engine_version
        time.sleep(self.delay_s)
        assert self.engine_version == version, "weights changed while generating"
        self.generating.clear()
        self.made.append((step, version))
        return _experience(step, version)


def _run(k: int, steps: int, delay_s: float = 0.01, train_s: float = 0.0):
    producer = ScriptedProducer(delay_s)
    pipe = AsyncExperience(producer, k, first_step=1, last_step=steps, engine_version=0)
    trained = []
    try:
        for step in range(1, steps + 1):
            exp, _ = pipe.get(step)
            trained.append((step, exp.weight_version, check_staleness(exp.weight_version, step, k)))
            time.sleep(train_s)

            def sync(v=step):
                assert not producer.generating.is_set(), "sync during generation"
                producer.engine_version = v

            pipe.sync_weights(step, sync)
    finally:
        pipe.close()
    return producer, trained


@pytest.mark.parametrize("k", [1, 2, 3])
def test_step_t_is_generated_by_version_t_minus_1_minus_k(k: int) -> None:
    producer, trained = _run(k, steps=8)
    assert sorted(producer.made) == [(t, generation_version(t, k)) for t in range(1, 9)]
    assert [s for _, _, s in trained] == [min(t - 1, k) for t in range(1, 9)]


def test_a_slow_trainer_or_a_slow_generator_gives_the_same_schedule() -> None:
    fast_gen, _ = _run(2, steps=6, delay_s=0.001, train_s=0.02)
    slow_gen, _ = _run(2, steps=6, delay_s=0.02, train_s=0.0)
    assert sorted(fast_gen.made) == sorted(slow_gen.made)


def test_the_producer_never_runs_more_than_k_plus_one_steps_ahead() -> None:
    producer = ScriptedProducer(0.001)
    pipe = AsyncExperience(producer, 2, first_step=1, last_step=10, engine_version=0)
    try:
        time.sleep(0.2)  # nobody trains: only the steps version 0 may make exist
        assert sorted(s for s, _ in producer.made) == [1, 2, 3]
    finally:
        pipe.close()


def test_paused_and_in_flight_hold_the_engine() -> None:
    producer = ScriptedProducer(0.02)
    pipe = AsyncExperience(producer, 1, first_step=1, last_step=5, engine_version=0)
    try:
        with pipe.paused():
            assert not producer.generating.is_set()
            before = len(producer.made)
            time.sleep(0.05)
            assert len(producer.made) == before
        deadline = time.time() + 10
        while len(producer.made) < 2 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # nothing more may start: step 3 needs version 1
        ready = pipe.in_flight()
        assert [e.step for e in ready] == [1, 2]  # what version 0 may make, all finished
    finally:
        pipe.close()


def test_resume_with_saved_batches_continues_the_schedule() -> None:
    """A checkpoint after step 2 (K = 2) holds steps 3 and 4; the producer goes on at 5."""
    producer = ScriptedProducer(0.001)
    producer.engine_version = 2
    saved = [_experience(3, 0), _experience(4, 1)]
    pipe = AsyncExperience(producer, 2, first_step=3, last_step=6, engine_version=2, ready=saved)
    try:
        assert pipe.get(3)[0].weight_version == 0 and pipe.get(4)[0].weight_version == 1
        exp, _ = pipe.get(5)
        assert exp.weight_version == 2 and producer.made == [(5, 2)]
    finally:
        pipe.close()


def test_a_producer_failure_reaches_the_trainer() -> None:
    producer = ScriptedProducer(0.001, fail_at=2)
    pipe = AsyncExperience(producer, 1, first_step=1, last_step=4, engine_version=0)
    try:
        pipe.get(1)
        with pytest.raises(RuntimeError, match="grader exploded at step 2"):
            pipe.get(2)
    finally:
        pipe.close()


def test_check_staleness_is_an_error_beyond_k_or_from_the_future() -> None:
    assert check_staleness(3, step=5, max_staleness=1) == 1
    assert check_staleness(4, step=5, max_staleness=0) == 0
    assert check_staleness(None, step=5, max_staleness=2) == 2
    with pytest.raises(StalenessError, match="2 versions old"):
        check_staleness(2, step=5, max_staleness=1)
    with pytest.raises(StalenessError, match="newer policy"):
        check_staleness(5, step=5, max_staleness=1)
    with pytest.raises(StalenessError, match="max_staleness=0"):
        check_staleness(3, step=5, max_staleness=0)


def test_experience_round_trips_through_torch_save(tmp_path) -> None:
    exp = _experience(3, 1)
    torch.save([exp.to_state()], tmp_path / "x.pt")
    back = Experience.from_state(torch.load(tmp_path / "x.pt", weights_only=False)[0])
    assert back.step == 3 and back.weight_version == 1 and back.texts == exp.texts
    assert torch.equal(back.batch.rollout_logprobs, exp.batch.rollout_logprobs)
    assert torch.equal(back.advantages, exp.advantages)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_prompt_positions_give_every_global_mini_batch_the_same_prompts(world: int) -> None:
    per_rank = [prompt_positions(3, 16, 2, r, world) for r in range(world)]
    assert sorted(p for part in per_rank for p in part) == list(range(32, 48))
    for j in range(2):  # global mini-batch j: the j-th half of every rank's share
        share = 16 // world // 2
        got = sorted(p for part in per_rank for p in part[j * share : (j + 1) * share])
        assert got == list(range(32 + 8 * j, 40 + 8 * j))


# --------------------------------------------------------------------------- DAPO re-sampling


class _Tokenizer:
    pad_token_id = 0

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(map(str, row)) for row in ids]


class _Rollout:
    """Answers ``[prompt id, row]``; the prompt's gold says whether its group is silent."""

    def generate(self, prompt_ids, n, sampling):
        from strace_ds.rollout.base import Generation

        rows = [(i, j) for i in range(len(prompt_ids)) for j in range(n)]
        return Generation(prompt_index=[i for i, _ in rows],
                          token_ids=[[prompt_ids[i][0], 10 + j] for i, j in rows],
                          logprobs=[[-1.0, -1.0] for _ in rows],
                          finish_reasons=["stop"] * len(rows), weight_version=0)


class _Pool:
    def score(self, texts, golds, examples=None, prompts=None):
        from strace_ds.rewards.pool import RewardResult

        rewards = [0.0 if g == "silent" else float(int(t.split()[1]) % 2)
                   for t, g in zip(texts, golds)]  # fmt: skip
        n = len(texts)
        return RewardResult(rewards=rewards, timed_out=[False] * n, errors=[None] * n,
                            components={"math_verify": list(rewards)})


def _producer(silent, **cfg):
    from strace_ds.config import TrainConfig
    from strace_ds.data.types import PromptDataset, PromptExample
    from strace_ds.train.experience import ExperienceProducer

    n = 40
    data = PromptDataset([PromptExample(f"q{i}", "silent" if silent(i) else "mixed")
                          for i in range(n)], "test")  # fmt: skip
    defaults = dict(prompts_per_step=8, mini_batches=2, seed=3, max_new_tokens=4, temperature=1.0,
                    top_p=1.0, group_size=4, overlong="none", overlong_buffer=1, advantage="grpo",
                    filter_zero_variance=True, max_sampling_draws=1)  # fmt: skip
    run = TrainConfig(**{**defaults, **cfg})
    return ExperienceProducer(run.rollouts, run.objective, run.layout(1), run.seed, _Rollout(),
                              _Pool(), _Tokenizer(), data, [[100 + i] for i in range(n)])


def test_without_re_sampling_silent_groups_are_masked_out() -> None:
    exp = _producer(lambda i: i % 2 == 0).produce(1)
    silent = [exp.golds[4 * g] == "silent" for g in range(8)]
    assert exp.draws == 1 and any(silent)
    assert exp.loss_rows.view(8, 4).all(1).tolist() == [not s for s in silent]


def test_re_sampling_fills_the_batch_with_informative_groups() -> None:
    producer = _producer(lambda i: i % 3 != 0, max_sampling_draws=10)
    first = producer.prompts_for_step(1)
    exp = producer.produce(1)
    assert exp.draws > 1 and len(exp.indices) == 8 and len(exp) == 32
    assert all(i % 3 == 0 for i in exp.indices)  # only informative prompts kept
    kept_first = [i for i in first if i % 3 == 0]
    assert exp.indices[: len(kept_first)] == kept_first  # the step's own come first, in order
    assert exp.loss_rows.all() and exp.zero_variance_frac == 0.0
    assert exp.batch.input_ids[:, 0].tolist() == [100 + i for i in exp.indices for _ in range(4)]
    assert exp.rewards.view(8, 4).tolist() == [[0.0, 1.0, 0.0, 1.0]] * 8


def test_re_sampling_stops_at_the_cap_and_masks_what_is_left() -> None:
    exp = _producer(lambda i: True, max_sampling_draws=3).produce(2)
    assert exp.draws == 3 and len(exp) == 32 and not exp.loss_rows.any()
