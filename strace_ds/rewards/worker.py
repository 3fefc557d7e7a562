"""The worker-process half of :mod:`strace_ds.rewards.pool`: limits, bounded logs, the loop.

Everything here runs inside a grading worker (a ``spawn``/``forkserver`` child): the
address-space and CPU limits, the log handler that truncates every line and counts repeats,
and :func:`_worker_main`, the process target that loads the pickled rewards and grades one
item at a time. The parent side (the pool, its deadlines and restarts) is in ``pool.py``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from strace_ds.rewards.registry import RewardFn

_MAX_ERROR_CHARS = 500  # error text may quote the (untrusted, possibly huge) response
DEFAULT_MEMORY_LIMIT_GIB = 2.0
"""Address space (``RLIMIT_AS``) a worker may add to what it maps once it has loaded the grader
(about 0.1 GiB for the default grader, more when the launching script imports torch)."""
DEFAULT_CPU_LIMIT_FACTOR = 3.0
"""CPU seconds one item may use, as a multiple of ``timeout_s`` (``RLIMIT_CPU``)."""
LOG_LINE_CHARS = 500
"""Worker log lines are cut to this many characters, then ``... [N chars]``."""
LOG_RECORDS_SHOWN = 3
"""Records shown per logging call site and worker; later ones are counted, not printed."""
LOG_RECORD_LINES = 12
"""At most this many lines of one record (a traceback) are printed: the first and last half."""
MAX_ABS_REWARD = 1e6
"""A reward value beyond ``|r| <= MAX_ABS_REWARD`` is a grading error (scored 0), like a
non-finite one: a weighted sum of such values overflows float32 (``3e38`` makes the gradient
norm infinite) or the advantage's statistics (``1e300``)."""


@dataclass(frozen=True)
class _WorkerLimits:
    """What :func:`_init_worker` applies in each worker (None: that limit is off)."""

    memory_bytes: int | None
    """Address space a worker may map beyond what it maps once loaded (RLIMIT_AS)."""
    cpu_s: int | None


def _truncate_line(line: str, limit: int = LOG_LINE_CHARS) -> str:
    if len(line) <= limit:
        return line
    return f"{line[:limit]}... [{len(line)} chars]"


class _BoundedLogHandler(logging.Handler):
    """Writes worker log records to stderr with every line truncated and repeats counted.

    Each call site (logger, file, line; for warnings, the warning's own location) prints its
    first :data:`LOG_RECORDS_SHOWN` records; after that only a count, when the total reaches
    10, 100, 1000, ... and when the worker exits normally.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.counts: dict[tuple[Any, ...], int] = {}
        self.reported: dict[tuple[Any, ...], int] = {}

    @staticmethod
    def _key(record: logging.LogRecord) -> tuple[Any, ...]:
        if record.name == "py.warnings":  # message starts with "file:line: Category: ..."
            return (record.name, *str(record.msg)[:300].split(": ", 2)[:2])
        return (record.name, record.levelno, record.pathname, record.lineno)

    def _write(self, text: str) -> None:
        stream = sys.stderr
        if stream is not None:
            stream.write(text + "\n")
            stream.flush()

    def _summary(self, key: tuple[Any, ...], n: int) -> str:
        where = f"{key[0]} at {key[2]}:{key[3]}" if len(key) == 4 else ": ".join(key)
        return (
            f"[reward worker {os.getpid()}] {n - LOG_RECORDS_SHOWN} more log records from "
            f"{_truncate_line(where)} suppressed ({n} in all)"
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            key = self._key(record)
            n = self.counts[key] = self.counts.get(key, 0) + 1
            if n <= LOG_RECORDS_SHOWN:
                lines = [_truncate_line(line) for line in self.format(record).splitlines()]
                if len(lines) > LOG_RECORD_LINES:
                    half = LOG_RECORD_LINES // 2
                    skipped = f"... [{len(lines) - 2 * half} lines]"
                    lines = [*lines[:half], skipped, *lines[-half:]]
                self._write("\n".join(lines))
            elif n == 10 ** round(math.log10(n)):  # 10, 100, 1000, ...
                self.reported[key] = n
                self._write(self._summary(key, n))
        except Exception as exc:  # say so in one bounded line, never a traceback per record
            with contextlib.suppress(Exception):
                self._write(
                    f"[reward worker {os.getpid()}] a log record from {record.name!r} could not "
                    f"be written: {_truncate_line(f'{type(exc).__name__}: {exc}')}"
                )

    def write_totals(self) -> None:
        """Report the counts that the last power-of-ten summary did not cover."""
        for key, n in self.counts.items():
            if n > LOG_RECORDS_SHOWN and self.reported.get(key) != n:
                self._write(self._summary(key, n))


_log_handler: _BoundedLogHandler | None = None


def _install_bounded_logging() -> None:
    """Route this worker's log records and warnings through a :class:`_BoundedLogHandler`."""
    global _log_handler
    _log_handler = _BoundedLogHandler()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_log_handler)
    logging.raiseExceptions = False  # a failing handler must not print a traceback per record
    logging.captureWarnings(True)


def _address_space_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _apply_limits(limits: _WorkerLimits) -> None:
    """Cap the address space (RLIMIT_AS) at what the loaded worker maps plus the headroom, and
    set RLIMIT_CORE to 0 (a SIGXCPU kill must not write a core file). No-op off Linux.

    The cap is relative because the baseline is not ours to choose: under "spawn" a worker
    re-imports the launching script, and a CUDA build of torch alone maps gigabytes.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import resource
    except ImportError:
        return
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    used = _address_space_bytes()
    if limits.memory_bytes is None or used is None:
        return
    cap = used + limits.memory_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _arm_cpu_limit(cpu_s: int | None) -> None:
    """Let the next item use ``cpu_s`` more CPU seconds; past them the kernel sends SIGXCPU,
    which ends the worker. RLIMIT_CPU counts the process's whole life, hence re-armed per item."""
    if cpu_s is None or not sys.platform.startswith("linux"):
        return
    try:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime) + cpu_s
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ImportError, ValueError, OSError):
        return


def _init_worker() -> None:
    """Worker initializer, run before the grader is loaded: signals and bounded logging."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _install_bounded_logging()


class _PairGrader:
    """Adapts a ``(response, gold) -> float`` grader (``RewardPool(grader=...)``) to the reward
    signature; pickles by reference to the wrapped module-level function."""

    def __init__(self, grader: Callable[[str, str], float]) -> None:
        self.grader = grader

    def __call__(self, response: str, gold: str, example: dict[str, Any]) -> float:
        return self.grader(response, gold)


def _checked_reward(value: Any) -> float:
    """``value`` as a float; raises when it is not a real number within ``|r| <=``
    :data:`MAX_ABS_REWARD` (bool counts as 0/1)."""
    if not isinstance(value, numbers.Real):
        raise TypeError(f"the reward returned {type(value).__name__}; return a finite float")
    try:
        reward = float(value)
    except (OverflowError, ValueError) as exc:  # an int too large for a float
        raise ValueError(f"the reward returned a number float() refuses ({exc})") from exc
    if not math.isfinite(reward):
        raise ValueError(f"the reward returned {reward}; return a finite float")
    if abs(reward) > MAX_ABS_REWARD:
        raise ValueError(
            f"the reward returned {reward:g}, beyond |r| <= {MAX_ABS_REWARD:g} "
            "(MAX_ABS_REWARD); scale it down"
        )
    return reward


def _own_process_group(output: Connection | None) -> None:
    """Make this worker the leader of a new session (so the pool can kill it together with any
    process its rewards start, ``os.killpg``) and send its stdout and stderr (fds 1 and 2, so
    subprocesses and C code too) into ``output``, which the pool reads and bounds."""
    with contextlib.suppress(AttributeError, OSError):
        os.setsid()
    if output is None:
        return
    fd = output.fileno()
    for target in (1, 2):
        with contextlib.suppress(OSError):
            os.dup2(fd, target)
    output.close()
    for stream in (sys.stdout, sys.stderr):  # a print reaches the pool when made, not at exit
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def _worker_main(
    conn: Connection,
    grader_bytes: bytes,
    limits: _WorkerLimits,
    output: Connection | None = None,
) -> None:
    """Worker loop: load the rewards, say ready, then run task
    ``(task, k, response, gold, example, prompt)`` with reward ``k``, forever.

    ``grader_bytes`` holds this worker's set of rewards (None in the slots of rewards another
    set grades). Exits on ``None`` (orderly close) or when the parent's end of the pipe closes
    (parent died).
    """
    _own_process_group(output)
    _init_worker()
    try:
        rewards: list[RewardFn] = pickle.loads(grader_bytes)
    except Exception:
        conn.send(("failed", traceback.format_exc()))
        return
    _apply_limits(limits)  # after the imports: the cap is headroom over the loaded worker
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            msg = None
        if msg is None:
            _fast_exit()
        task, k, response, gold, example, prompt = msg
        _arm_cpu_limit(limits.cpu_s)
        fn = rewards[k]
        extra = {"prompt": prompt} if getattr(fn, "wants_prompt", False) else {}
        try:
            reward, error = _checked_reward(fn(response, gold, example, **extra)), None
        except Exception as exc:  # a reward is allowed to fail on bad input; we record it
            reward, error = 0.0, _truncate_line(f"{type(exc).__name__}: {exc}", _MAX_ERROR_CHARS)
        conn.send((task, reward, error))


def _fast_exit() -> None:
    """Leave the worker without interpreter teardown (~0.5 s of sympy cleanup, per worker).

    Safe because a worker holds no state worth finalizing: results went out over the pipe.
    """
    if _log_handler is not None:
        with contextlib.suppress(Exception):
            _log_handler.write_totals()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
