"""Shared fixtures: the embedded tiny policy (shipped with the package)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_policy() -> Path:
    """The default warm-started tiny Qwen3 policy: the pinned copy in ``strace_ds/assets``."""
    from strace_ds.tiny import default_policy_dir

    return default_policy_dir()
