"""Start-up guards through scripts/train.py: one trainer per run directory, prompts that fit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.train_run import SMALL, TRAIN, _env, _train, _where

from strace_ds.storage.run_lock import LOCK_FILE, RunLock

pytestmark = pytest.mark.slow


def test_a_second_trainer_in_the_same_run_dir_is_refused(tiny_policy, tmp_path):
    args = [*_where(tiny_policy), "--run_name", "shared", "--eval_every", "-1", *SMALL]
    args[args.index("--steps") + 1] = "200"  # still training while the second one starts
    first = subprocess.Popen([sys.executable, str(TRAIN), *args], cwd=tmp_path, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    lock = tmp_path / "out" / "shared" / LOCK_FILE
    try:
        deadline = time.monotonic() + 120
        while not (lock.exists() and f'"pid": {first.pid}' in lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        second = _train(args, cwd=tmp_path, check=False)
        assert second.returncode == 2, second.stderr[-3000:]
        line = second.stderr.strip().splitlines()[-1]
        assert f"is in use by another trainer (pid {first.pid} on " in line
        assert "another --run_name" in line and "Traceback" not in second.stderr
        assert first.poll() is None  # the first run goes on, untouched
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    RunLock(lock.parent).acquire().release()  # free as soon as its holder died


def test_a_prompt_longer_than_the_context_is_refused_or_dropped(tiny_policy, tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [{"problem": "What is 2 + 3?", "answer": "5"},
            {"problem": "Add " + "one and " * 400 + "two.", "answer": "3"},
            {"problem": "What is 4 + 4?", "answer": "8"}]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [*_where(tiny_policy), "--dataset", str(data), "--eval_every", "-1",
            "--export", "false", *SMALL]  # fmt: skip
    args[args.index("--steps") + 1] = "1"
    refused = _train([*args, "--run_name", "strict"], cwd=tmp_path, check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert f"1 of 3 prompts of {data} are longer than the model's context (512 positions)" in line
    assert "minus max_new_tokens (32) = 480 tokens, e.g. row 1 with " in line
    assert "--drop_long_prompts true" in line
    dropped = _train([*args, "--run_name", "loose", "--drop_long_prompts", "true"], cwd=tmp_path)
    out = dropped.stdout + dropped.stderr
    assert "data: 1 prompts longer than the model's context minus max_new_tokens skipped" in out
