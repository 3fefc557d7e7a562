"""One writer per run directory: a second holder is refused, a dead holder's lock is free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from strace_ds.storage.run_lock import LOCK_FILE, RunDirLockedError, RunLock

HOLD = textwrap.dedent("""
    import sys, time
    from strace_ds.storage.run_lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(60)
""")


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_is_refused_naming_the_holder_until_it_dies(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunDirLockedError, match=rf"in use by another trainer \(pid {proc.pid} "
                           r"on .*--run_name.*--resume auto"):  # fmt: skip
            RunLock(tmp_path).acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup runs: the lock file stays behind
        proc.wait()
    assert (tmp_path / LOCK_FILE).exists()
    with RunLock(tmp_path) as lock:  # the dead holder's lock is free at once
        assert lock.held
        assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_FILE).read_text()
    assert not lock.held


def test_release_and_reacquire_in_one_process(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirLockedError):  # a second open file description is refused too
        RunLock(tmp_path).acquire()
    first.release()
    first.release()  # idempotent
    RunLock(tmp_path).acquire().release()
