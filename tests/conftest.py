"""Shared fixtures: the embedded tiny policy (shipped with the package), and a guard that keeps
one test's in-process rendezvous variables from leaking into later tests' subprocesses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# What strace_ds.distributed.init_distributed (and the deepspeed launcher) put in os.environ.
_RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE")


@pytest.fixture(autouse=True)
def _restore_rendezvous_env():
    """A test that starts torch.distributed in-process sets RANK/MASTER_PORT in os.environ;
    every later subprocess (training runs, notebook kernels) would inherit them and try to
    listen on the port this process's store already holds (EADDRINUSE, seen in CI)."""
    before = {k: os.environ.get(k) for k in _RENDEZVOUS}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def fake():
    """A fake SGLang HTTP server (``tests/fake_sglang.py``) on a free port, closed after."""
    from fake_sglang import FakeSGLang

    server = FakeSGLang()
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_policy() -> Path:
    """The default warm-started tiny Qwen3 policy: the pinned copy in ``strace_ds/assets``."""
    from strace_ds.assets import default_policy_dir

    return default_policy_dir()
