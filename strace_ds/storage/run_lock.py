"""One writer per run directory: an exclusive lock held for the run's life.

Two trainers given the same ``--output_dir``/``--run_name`` would replace each other's
checkpoints and export (and one's start-of-save cleanup can delete the other's staging
folder). The first trainer takes ``<run_dir>/.run.lock`` with ``fcntl.flock``; a second one is
refused with a one-line error naming the holder. ``flock`` belongs to the open file
description, so the kernel releases it when the holder exits in any way (return, exception,
SIGKILL): a lock file left behind by a dead process is never stale, the next run simply takes
it. The file holds the holder's host, pid and start time for the error message only.

``flock`` is reliable on local filesystems and on most network ones with lock support (NFSv4,
Lustre with ``flock``); on a filesystem without lock support the lock is announced as
unavailable and the run goes on unguarded rather than refusing to start.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".run.lock"


class RunDirLockedError(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    """``with RunLock(run_dir):`` or :meth:`acquire` / :meth:`release` (idempotent)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None
        self.unsupported: str | None = None  # why the filesystem refused locking, if it did

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirLockedError(
                    f"run directory {self.path.parent} is in use by another trainer ({holder}); "
                    "two runs must not share it: give this one another --run_name (or "
                    "--output_dir), or wait for that run to finish and relaunch with "
                    "--resume auto"
                ) from None
            os.close(fd)  # ENOLCK, EOPNOTSUPP...: no locking on this filesystem
            self.unsupported = os.strerror(exc.errno or 0)
            return self
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": since}
        os.write(fd, json.dumps(holder).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self, tidy: bool = False) -> None:
        """Release the lock. ``tidy``: a run that failed at start-up leaves no trace, so the
        lock file and the directories it alone made are removed when nothing else is there."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if tidy:
                self.path.unlink(missing_ok=True)
                for folder in (self.path.parent, self.path.parent.parent):
                    try:
                        folder.rmdir()  # only when empty
                    except OSError:
                        break
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
