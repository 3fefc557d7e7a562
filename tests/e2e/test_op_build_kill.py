"""A start-up killed while DeepSpeed compiles its CPU op leaves no later launch hanging.

torch's extension builder marks a build in progress with a ``lock`` file; a kill mid-build
left it behind and every later launch waited forever after "Setting accelerator to CPU".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

START = "from strace_ds.distributed import init_distributed; init_distributed(); print('started')"


def _launch(env):
    return subprocess.Popen(
        [sys.executable, "-c", START], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def test_a_kill_during_the_op_build_leaves_no_launch_hanging(tmp_path):
    ext = tmp_path / "extensions"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext)}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    lock = ext / "deepspeed_shm_comm" / "lock"
    first = _launch(env)
    deadline = time.monotonic() + 120
    while not lock.exists():  # the build has started
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "the op build never started"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the launcher and its compiler, mid-build
    first.wait()
    assert lock.exists()  # what used to hang every later launch
    second = _launch(env)
    try:
        out, _ = second.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(second.pid, signal.SIGKILL)
        pytest.fail("the relaunch hung on the killed build's lock")
    assert second.returncode == 0, out
    assert f"removed a stale build lock left by a killed start-up: {lock}" in out
    assert "started" in out and not lock.exists()
