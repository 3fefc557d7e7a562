"""The seed helpers keep the values every earlier run drew (a changed formula would change
every run's samples and break resuming runs started before it)."""

from __future__ import annotations

from strace_ds.rollout.sglang.engine import row_seed
from strace_ds.seeding import hash_seed, step_seed


def test_pinned_values():
    # sha256("0/1/0/rollout")[:4] little-endian, etc.: computed with the formulas as first shipped
    assert step_seed(0, 1, 0, "rollout") == 1671998295
    assert step_seed(7, 30, 1, "eval") == 2094843598
    assert row_seed(12345, 3) == 60755119
    assert hash_seed("0/1/0/rollout") == step_seed(0, 1, 0, "rollout")
    assert 0 <= row_seed(1, 2) < 2**31
