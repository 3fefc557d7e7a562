"""Group-relative advantages against hand-computed values and explicit loops."""

from __future__ import annotations

import math

import pytest
import torch

from strace_ds.losses.advantages import (
    ADVANTAGE_METHODS,
    GroupAdvantages,
    filter_zero_variance_groups,
    group_advantages,
)

TOL = 1e-12


def test_grpo_hand_computed() -> None:
    # Group 0: R = [1, 0, 0, 1]; mean = 0.5; deviations = +-0.5;
    #   unbiased var = 4 * 0.25 / 3 = 1/3; std = 1/sqrt(3) = 0.5773502691896258;
    #   A = +-0.5 / (std + 1e-6) = +-0.8660239...
    # Group 1: R = [2, 2, 2, 2] -> zero variance -> A = 0 exactly.
    # Group 2: R = [0, 0, 0, 3]; mean = 0.75; deviations = [-0.75]*3 + [2.25];
    #   unbiased var = (3 * 0.5625 + 5.0625) / 3 = 2.25; std = 1.5;
    #   A = [-0.75, -0.75, -0.75, 2.25] / 1.500001.
    rewards = torch.tensor([1, 0, 0, 1, 2, 2, 2, 2, 0, 0, 0, 3], dtype=torch.float64)
    out = group_advantages(rewards, group_size=4, method="grpo")
    s0 = 1 / math.sqrt(3) + 1e-6
    s2 = 1.5 + 1e-6
    expected = torch.tensor(
        [0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0, 0, 0, 0, 0]
        + [-0.75 / s2, -0.75 / s2, -0.75 / s2, 2.25 / s2],
        dtype=torch.float64,
    )
    assert isinstance(out, GroupAdvantages)
    torch.testing.assert_close(out.advantages, expected, rtol=0, atol=TOL)
    assert out.zero_variance_mask.tolist() == [False, True, False]
    assert out.zero_variance_frac == pytest.approx(1 / 3, abs=1e-15)


def test_dr_grpo_hand_computed() -> None:
    # Group 0: R = [1, 0, 0]; mean = 1/3; A = [2/3, -1/3, -1/3].
    # Group 1: R = [0.5, 0.5, 0.5] -> A = 0, reported.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 0.5], dtype=torch.float64)
    out = group_advantages(rewards, group_size=3, method="dr_grpo")
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(out.advantages, expected, rtol=0, atol=TOL)
    assert out.zero_variance_mask.tolist() == [False, True]
    assert out.zero_variance_frac == 0.5


def test_rloo_hand_computed() -> None:
    # R = [1, 0, 0, 1]: leave-one-out means are [1/3, 2/3, 2/3, 1/3]
    #   (e.g. for j=0: (0 + 0 + 1) / 3), so A = [2/3, -2/3, -2/3, 2/3]
    #   = G/(G-1) * (R - 0.5) = 4/3 * [0.5, -0.5, -0.5, 0.5].
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    out = group_advantages(rewards, group_size=4, method="rloo")
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3], dtype=torch.float64)
    torch.testing.assert_close(out.advantages, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("G", [2, 3, 8])
def test_rloo_matches_explicit_leave_one_out_loop(G: int) -> None:
    gen = torch.Generator().manual_seed(G)
    rewards = torch.randn(5 * G, generator=gen, dtype=torch.float64)
    out = group_advantages(rewards, group_size=G, method="rloo").advantages
    expected = torch.empty_like(rewards)
    for p in range(5):
        group = rewards[p * G : (p + 1) * G].tolist()
        for j in range(G):
            others = group[:j] + group[j + 1 :]
            expected[p * G + j] = group[j] - sum(others) / len(others)
    torch.testing.assert_close(out, expected, rtol=0, atol=TOL)
    # The documented identity: RLOO = G / (G - 1) * Dr. GRPO.
    dr = group_advantages(rewards, group_size=G, method="dr_grpo").advantages
    torch.testing.assert_close(out, dr * G / (G - 1), rtol=0, atol=TOL)


@pytest.mark.parametrize("method", sorted(ADVANTAGE_METHODS))
def test_grpo_family_matches_python_loop(method: str) -> None:
    G = 6
    gen = torch.Generator().manual_seed(7)
    rewards = torch.rand(4 * G, generator=gen, dtype=torch.float64)
    out = group_advantages(rewards, group_size=G, method=method, eps=1e-3).advantages
    for p in range(4):
        group = rewards[p * G : (p + 1) * G].tolist()
        mean = sum(group) / G
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (G - 1))
        for j, r in enumerate(group):
            want = {
                "grpo": (r - mean) / (std + 1e-3),
                "dr_grpo": r - mean,
                "rloo": r - (sum(group) - r) / (G - 1),
            }[method]
            assert abs(out[p * G + j].item() - want) < TOL


@pytest.mark.parametrize("method", sorted(ADVANTAGE_METHODS))
def test_equal_rewards_give_exact_zero(method: str) -> None:
    # 0.1 is not exactly representable: the group mean 0.1 * 7 / 7 differs from 0.1 in the
    # last bit, so without the explicit mask the advantage would be ~1e-17, not 0.
    rewards = torch.full((7,), 0.1, dtype=torch.float32)
    out = group_advantages(rewards, group_size=7, method=method)
    assert torch.equal(out.advantages, torch.zeros(7))
    assert out.zero_variance_mask.tolist() == [True]
    assert out.zero_variance_frac == 1.0


def test_integer_and_bool_rewards_are_cast_to_float() -> None:
    out = group_advantages(torch.tensor([True, False]), group_size=2, method="dr_grpo")
    assert out.advantages.dtype == torch.get_default_dtype()
    assert out.advantages.tolist() == [0.5, -0.5]
    out = group_advantages(torch.tensor([3, 1]), group_size=2, method="rloo")
    assert out.advantages.tolist() == [2.0, -2.0]


def test_dtype_is_kept() -> None:
    r = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert group_advantages(r, 2).advantages.dtype == torch.float64


def test_filter_zero_variance_groups_keeps_whole_groups() -> None:
    # groups: [1, 1] (flat), [0, 1] (kept), [0, 0] (flat), [3, 2] (kept)
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 3.0, 2.0])
    keep = filter_zero_variance_groups(rewards, group_size=2)
    assert keep.dtype == torch.int64
    assert keep.tolist() == [2, 3, 6, 7]
    assert filter_zero_variance_groups(torch.zeros(4), 2).tolist() == []
    # The kept rows are again contiguous groups: their advantages have no flat group.
    kept = group_advantages(rewards[keep], 2)
    assert not kept.zero_variance_mask.any()


def test_unknown_method_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown advantage method 'ppo'.*dr_grpo.*grpo.*rloo"):
        group_advantages(torch.zeros(4), 2, method="ppo")


@pytest.mark.parametrize(
    ("rewards", "group_size", "method", "match"),
    [
        (torch.zeros(6), 4, "grpo", "multiple of group_size"),
        (torch.zeros(0), 2, "grpo", "multiple of group_size"),
        (torch.zeros(3), 1, "grpo", "group_size must be >= 2"),
        (torch.zeros(3), 1, "rloo", "group_size must be >= 2"),
        (torch.zeros(3), 0, "dr_grpo", "group_size must be >= 1"),
        (torch.zeros(4), 2.0, "grpo", "group_size must be an int"),
        (torch.zeros(2, 2), 2, "grpo", "1-D tensor"),
        (torch.tensor([0.0, float("nan")]), 2, "grpo", "finite"),
    ],
)
def test_bad_input_raises(rewards, group_size, method: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, group_size, method=method)


def test_bad_eps_raises() -> None:
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        group_advantages(torch.zeros(4), 2, eps=-1.0)


def test_dr_grpo_allows_single_answer_groups() -> None:
    out = group_advantages(torch.tensor([1.0, 0.0, 2.0]), group_size=1, method="dr_grpo")
    assert out.advantages.tolist() == [0.0, 0.0, 0.0]
    assert out.zero_variance_frac == 1.0
