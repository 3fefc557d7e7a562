"""Shared fixtures: the embedded tiny policy, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_policy() -> Path:
    """The default warm-started tiny Qwen3 policy (cached on disk; built on first use)."""
    from strace_ds.tiny import build_tiny_policy

    return build_tiny_policy()
