"""Grade untrusted responses in worker processes with a hard per-item timeout.

Why processes: math-verify hands model output to sympy, which can hang or blow up on adversarial
input (``10^{10^{10}}``, deeply nested sets); only killing a process bounds that reliably.
Why "spawn" (or "forkserver"), never "fork": the trainer process holds torch/DeepSpeed threads,
and forking a multi-threaded process can deadlock the child.

Design: each worker owns a private duplex pipe and receives ONE item at a time, so a hung item
is pinned to one known process. The parent multiplexes the pipes and the process sentinels with
:func:`multiprocessing.connection.wait`; when an item passes its deadline its worker is killed,
reaped and replaced (asynchronously: the replacement gets work once it reports ready), and the
other workers carry on. A private pipe per worker (instead of a shared queue) also means killing
a worker can never leave a shared lock held.

Caveat of "spawn": every worker re-imports the launching script as ``__mp_main__``, so scripts
must keep heavy imports and work under ``if __name__ == "__main__":`` (thin scripts do).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from strace_ds.rewards.grading import grade_answer

START_METHODS = ("spawn", "forkserver")
_MAX_ERROR_CHARS = 500  # error text may quote the (untrusted, possibly huge) response


@dataclass
class RewardResult:
    """Per-item outcome of :meth:`RewardPool.score`, aligned with its inputs (length N)."""

    rewards: list[float]
    """The grader's reward, or 0.0 for an item that timed out or raised."""
    timed_out: list[bool]
    """True where the item ran past ``timeout_s`` and its worker was killed."""
    errors: list[str | None]
    """``"ExcType: message"`` where the grader raised (or its worker died), else None.
    Timed-out items have None here: timeouts and errors are counted apart."""

    @property
    def num_timeouts(self) -> int:
        """How many items were killed for exceeding the timeout."""
        return sum(self.timed_out)

    @property
    def num_errors(self) -> int:
        """How many items raised in the grader (or lost their worker to a crash)."""
        return sum(e is not None for e in self.errors)


def _worker_main(conn: Connection, grader_bytes: bytes) -> None:
    """Worker loop: load the grader, say ready, then grade ``(idx, response, gold)`` forever.

    Exits on ``None`` (orderly close) or when the parent's end of the pipe closes (parent died).
    """
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        grader = pickle.loads(grader_bytes)
    except Exception:
        conn.send(("failed", traceback.format_exc()))
        return
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            msg = None
        if msg is None:
            _fast_exit()
        idx, response, gold = msg
        try:
            reward, error = float(grader(response, gold)), None
        except Exception as exc:  # the grader is allowed to fail on bad input; we record it
            reward, error = 0.0, f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
        conn.send((idx, reward, error))


def _fast_exit() -> None:
    """Leave the worker without interpreter teardown (~0.5 s of sympy cleanup, per worker).

    Safe because a worker holds no state worth finalizing: results went out over the pipe.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@dataclass
class _Worker:
    """Parent-side handle on one worker process."""

    process: Any  # a multiprocessing Process of the chosen context
    conn: Connection
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    task: int | None = None
    """Index (in the current ``score`` call) of the item in flight, None when idle."""
    deadline: float = 0.0


def _stop_worker(worker: _Worker) -> None:
    """Kill a worker if it still runs and reap it (join), so no zombie is left behind."""
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join(5.0)
    worker.conn.close()


def _shutdown(workers: list[_Worker], grace_s: float) -> None:
    """Stop every worker; shared by ``close`` and the garbage-collection finalizer.

    All workers are asked to exit first and then joined, so their interpreter shutdowns overlap;
    whoever is still alive after ``grace_s`` (e.g. stuck in a hung item) is killed.
    """
    if grace_s > 0:
        for w in workers:
            # A broken pipe means the process is already dead or dying.
            with contextlib.suppress(OSError, ValueError):
                w.conn.send(None)
        end = time.monotonic() + grace_s
        for w in workers:
            w.process.join(max(0.0, end - time.monotonic()))
    while workers:
        _stop_worker(workers.pop())


class RewardPool:
    """A reusable pool of grading processes; ``score`` grades a batch with per-item timeouts.

    Example::

        with RewardPool(num_workers=4, timeout_s=10.0) as pool:
            result = pool.score(responses, golds)   # RewardResult, aligned with the inputs
            rewards = torch.tensor(result.rewards)  # [N]

    Args:
        num_workers: worker processes (each grades one item at a time).
        timeout_s: wall-clock limit per item, counted from the moment a worker receives it
            (queueing behind other items does not count). Past it the worker is killed and
            replaced, and the item scores 0.0 with ``timed_out`` True.
        grader: ``(response, gold) -> float``; must be picklable, i.e. a module-level function
            (it is re-imported by name in each worker).
        start_method: ``"spawn"`` (default) or ``"forkserver"`` (faster replacements once its
            server is up; the server imports ``__main__`` once).
        start_timeout_s: how long a worker may take to import and report ready before the pool
            gives up with a RuntimeError.

    Not thread-safe: call ``score`` from one thread at a time.
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 10.0,
        grader: Callable[[str, str], float] = grade_answer,
        start_method: str = "spawn",
        start_timeout_s: float = 120.0,
    ) -> None:
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"RewardPool: num_workers must be an int >= 1, got {num_workers!r}")
        if not timeout_s > 0:
            raise ValueError(f"RewardPool: timeout_s must be > 0 seconds, got {timeout_s!r}")
        if not start_timeout_s > 0:
            raise ValueError(f"RewardPool: start_timeout_s must be > 0, got {start_timeout_s!r}")
        if start_method not in START_METHODS:
            raise ValueError(
                f"RewardPool: start_method {start_method!r} is not allowed; choose one of "
                f"{', '.join(START_METHODS)} (fork is unsafe in a process holding torch threads)"
            )
        try:
            self._grader_bytes = pickle.dumps(grader)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise ValueError(
                f"RewardPool: grader {grader!r} cannot be sent to worker processes ({exc}); "
                "pass a function defined at module level (not a lambda or a closure)"
            ) from exc
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.num_restarts = 0
        """Workers replaced so far (after timeouts or crashes), over the pool's lifetime."""
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker] = []
        self._closed = False
        # Reap the workers even if the owner forgets close(); the finalizer holds the list,
        # not self, so it does not keep the pool alive.
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, 0.0)
        for _ in range(num_workers):
            self._workers.append(self._spawn())

    # ----------------------------------------------------------------- lifecycle
    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, self._grader_bytes),
            name="strace_ds-reward-worker",
            daemon=True,  # never outlive the trainer
        )
        process.start()
        # Only the child may hold this end: then the child sees EOF if the parent dies.
        child_conn.close()
        return _Worker(process=process, conn=parent_conn)

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` (hung or dead), reap it, and start a fresh one in its slot."""
        _stop_worker(worker)
        self._workers[self._workers.index(worker)] = self._spawn()
        self.num_restarts += 1

    def wait_ready(self) -> None:
        """Block until every worker has imported the grader and reported ready."""
        self._check_open()
        while not all(w.ready for w in self._workers):
            self._poll(result=None)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (they change only when a worker is replaced)."""
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Stop and reap every worker (idempotent). The pool cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            _shutdown(self._workers, grace_s=1.0)
            self._finalizer.detach()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("RewardPool: the pool is closed; create a new RewardPool")

    # ----------------------------------------------------------------- scoring
    def score(self, responses: list[str], golds: list[str]) -> RewardResult:
        """Grade ``responses[i]`` against ``golds[i]`` for all i, concurrently.

        Returns a :class:`RewardResult` aligned with the inputs. A timeout or a grader exception
        costs that item (reward 0.0, recorded) and never the batch.
        """
        self._check_open()
        _validate_batch(responses, golds)
        n = len(responses)
        result = RewardResult(rewards=[0.0] * n, timed_out=[False] * n, errors=[None] * n)
        pending = deque(range(n))
        try:
            while pending or any(w.task is not None for w in self._workers):
                self._dispatch(pending, responses, golds)
                self._poll(result)
        except BaseException:
            # Interrupted (e.g. Ctrl-C): items still in flight would answer into the next call.
            for w in list(self._workers):
                if w.task is not None:
                    self._replace(w)
            raise
        return result

    def _dispatch(self, pending: deque[int], responses: list[str], golds: list[str]) -> None:
        """Hand the next pending item to every ready, idle worker."""
        for w in list(self._workers):
            if not pending:
                return
            if w.ready and w.task is None:
                i = pending.popleft()
                try:
                    w.conn.send((i, responses[i], golds[i]))
                except (OSError, ValueError):
                    pending.appendleft(i)  # died while idle: the item never started
                    self._replace(w)
                    continue
                w.task, w.deadline = i, time.monotonic() + self.timeout_s

    def _poll(self, result: RewardResult | None) -> None:
        """Wait for the next message, death or deadline, and act on everything that fired.

        ``result`` is the batch being scored, None outside ``score`` (then no item is in flight).
        """
        now = time.monotonic()
        deadlines = [w.started + self.start_timeout_s for w in self._workers if not w.ready]
        deadlines += [w.deadline for w in self._workers if w.task is not None]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        handles: list[Any] = [w.conn for w in self._workers]
        handles += [w.process.sentinel for w in self._workers]
        fired = set(wait(handles, timeout))
        for w in list(self._workers):
            if w.conn in fired:
                self._receive(w, result)
            elif w.process.sentinel in fired:
                self._on_death(w, result)
        self._enforce_deadlines(result)

    def _receive(self, w: _Worker, result: RewardResult | None) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            self._on_death(w, result)
            return
        if not w.ready:
            kind, detail = msg
            if kind != "ready":
                self.close()
                raise RuntimeError(f"RewardPool: a worker could not load the grader:\n{detail}")
            w.ready = True
            return
        idx, reward, error = msg
        if result is not None and idx == w.task:
            result.rewards[idx], result.errors[idx] = reward, error
        w.task = None

    def _on_death(self, w: _Worker, result: RewardResult | None) -> None:
        """A worker exited on its own: a crash in the grader, or a failure at start-up."""
        w.process.join(1.0)  # the sentinel can fire before the exit code is collected
        code = w.process.exitcode
        if not w.ready:
            self.close()
            raise RuntimeError(
                f"RewardPool: a worker died while starting (exit code {code}); its traceback is "
                "on stderr. Usual causes: the grader's module cannot be imported, or the "
                "launching script cannot be re-imported under 'spawn' (run it from a file and "
                "guard its work with `if __name__ == '__main__':`)"
            )
        if w.task is not None and result is not None:
            result.errors[w.task] = f"WorkerDied: worker process exited with code {code}"
        self._replace(w)

    def _enforce_deadlines(self, result: RewardResult | None) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            if not w.ready and now > w.started + self.start_timeout_s:
                self.close()
                raise RuntimeError(
                    f"RewardPool: a worker did not start within start_timeout_s="
                    f"{self.start_timeout_s:g} s; raise it if the machine is heavily loaded"
                )
            if w.task is not None and result is not None and now >= w.deadline:
                result.timed_out[w.task] = True
                self._replace(w)


def _validate_batch(responses: list[str], golds: list[str]) -> None:
    """Reject batches the workers could not grade, naming the argument and the fix."""
    if len(responses) != len(golds):
        raise ValueError(
            f"RewardPool.score: responses ({len(responses)}) and golds ({len(golds)}) must have "
            "the same length; repeat each gold once per sampled response"
        )
    for name, items in (("responses", responses), ("golds", golds)):
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ValueError(
                    f"RewardPool.score: {name}[{i}] is {type(item).__name__}, expected str; "
                    "convert answers with str() when loading the dataset"
                )
