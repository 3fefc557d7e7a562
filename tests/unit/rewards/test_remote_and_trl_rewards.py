"""Rewards from elsewhere: a remote server (``--reward http://HOST:PORT/PATH``, one batched POST
per batch, a deadline, failures as grading errors) and reward functions in TRL's shape."""

from __future__ import annotations

import socket
import time

import pytest
from helpers.reward_server import serve

from strace_ds.rewards import RewardPool, parse_reward_spec
from strace_ds.rewards.registry import RewardTerm, TrlReward, load_reward

RESPONSES = [r"\boxed{7}", r"\boxed{8}", r"the answer is 7", "no idea"]
GOLDS = ["7", "7", "7", "7"]


def test_a_remote_reward_is_a_term_with_a_weight_and_a_label() -> None:
    terms = parse_reward_spec("math_verify,http://127.0.0.1:8000/v1/score:0.5")
    assert terms[1] == RewardTerm("http://127.0.0.1:8000/v1/score", 0.5)
    assert terms[1].label == "score"
    assert parse_reward_spec("https://h/x")[0].weight == 1.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("http://127.0.0.1:8000", "needs a path"),
        ("http:///score", r"http\(s\)://HOST\[:PORT\]/PATH"),
    ],
)
def test_bad_urls_are_refused_naming_the_fix(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"--reward .*" + message):
        parse_reward_spec(spec)


def test_a_remote_reward_scores_a_batch_in_one_post() -> None:
    with serve("ok") as (url, seen), RewardPool(num_workers=1, rewards=f"math_verify,{url}:0.5") \
            as pool:
        examples = [{"bonus": i} for i in range(4)]
        result = pool.score(RESPONSES, GOLDS, examples, prompts=["q?"] * 4)
    assert result.components["score"] == [1.0, 0.0, 1.0, 0.0]
    assert result.rewards == [1.5, 0.0, 0.5, 0.0]
    assert result.num_errors == 0
    assert len(seen) == 2  # the start-up probe, then one POST for the batch
    assert seen[1] == {"prompts": ["q?"] * 4, "responses": RESPONSES, "golds": GOLDS,
                       "examples": examples}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_a_one_line_start_up_error() -> None:
    url = f"http://127.0.0.1:{_free_port()}/score"
    with pytest.raises(ValueError, match=r"--reward: remote reward .* cannot be used: .*start its"):
        RewardPool(num_workers=1, rewards=url, remote_timeout_s=2.0)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("hang", "no reply within the 1.5 s deadline"),
        ("short", "with 4 numbers, got 3 rewards"),
        ("garbage", "non-JSON"),
        ("http500", "HTTP 500"),
    ],
)
def test_remote_failures_are_grading_errors_never_correct(mode: str, message: str) -> None:
    with serve(mode) as (url, _), RewardPool(num_workers=1, rewards=url,
                                             remote_timeout_s=1.5) as pool:
        t0 = time.monotonic()
        result = pool.score(RESPONSES, GOLDS)
        elapsed = time.monotonic() - t0
    assert elapsed < 5.0  # the deadline bounds a hung server
    assert result.rewards == [0.0] * 4
    assert result.num_errors == 4
    assert all(message in e for e in result.errors), result.errors[0]


def test_remote_non_numbers_are_errors_of_their_answers() -> None:
    with serve("strings") as (url, _), RewardPool(num_workers=1, rewards=url) as pool:
        result = pool.score(RESPONSES, GOLDS)
    assert result.rewards == [0.0, 0.0, 0.0, 0.0]
    assert [e is not None for e in result.errors] == [True, True, True, False]
    assert "TypeError" in result.errors[0] and "True" in result.errors[2]


def test_trl_shaped_functions_are_detected_and_adapted() -> None:
    fn = load_reward("user_rewards:trl_contains_answer")
    assert isinstance(fn, TrlReward)
    assert fn("it is 7", "7", {"bonus": 0.5}, prompt="what?") == 1.5
    assert fn("it is 7", "7", {}, prompt="a statement.") == 0.0
    assert load_reward("user_rewards:trl_named_only")("x" * 50, "7", {"bonus": 1, "other": 2}) \
        == 1.5
    assert not isinstance(load_reward("user_rewards:bonus"), TrlReward)


def test_trl_shaped_functions_grade_in_the_pool() -> None:
    spec = "user_rewards:trl_contains_answer,user_rewards:trl_two_values:0"
    with RewardPool(num_workers=1, rewards=spec) as pool:
        result = pool.score(RESPONSES, GOLDS, [{"bonus": 0.25}] * 4, prompts=["q?"] * 4)
    assert result.components["trl_contains_answer"] == [1.25, 0.25, 1.25, 0.25]
    assert result.component_errors["trl_contains_answer"] == [None] * 4
    assert all("2 values for 1 completion" in e for e in result.component_errors["trl_two_values"])
