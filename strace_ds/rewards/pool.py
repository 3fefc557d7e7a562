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

Limits inside each worker (Linux; skipped where ``resource`` cannot set them): its address space
is capped (``RLIMIT_AS``) at what it maps once loaded plus ``memory_limit_gib``, so a memory
blow-up raises MemoryError in the grader (the item scores 0 with an error) instead of swapping
the machine; and each item may use
at most ``cpu_limit_factor * timeout_s`` CPU seconds (``RLIMIT_CPU``, re-armed before every
item), a backstop that kills the worker even if the parent stops watching. Worker log records
and warnings (math-verify logs the whole offending answer, e.g. a 1,000,000-character line per
parsing timeout) go through a handler that truncates every line and shows only the first few
records of each call site, counting the rest.

Rewards: the pool grades with one or more reward functions (:mod:`strace_ds.rewards.registry`,
``fn(response, gold, example) -> float``), math-verify alone by default. Every (item, reward)
pair is one task with its own timeout, so a hung user function costs only its own term of that
item; the item's reward is the weighted sum of its terms, and each term is reported apart.

Caveat of "spawn": every worker re-imports the launching script as ``__mp_main__``, so scripts
must keep heavy imports and work under ``if __name__ == "__main__":`` (thin scripts do).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from strace_ds.rewards.grading import grade_answer
from strace_ds.rewards.registry import DEFAULT_SPEC, REWARDS, RewardTerm, load_rewards
from strace_ds.rewards.remote import RemoteReward, RemoteRewardError
from strace_ds.rewards.worker import (
    DEFAULT_CPU_LIMIT_FACTOR,
    DEFAULT_MEMORY_LIMIT_GIB,
    _PairGrader,
    _worker_main,
    _WorkerLimits,
)

START_METHODS = ("spawn", "forkserver")
OUTPUT_CALL_BYTES = 4096
"""What one reward call (one item, one reward) may print (stdout and stderr of its worker and
the worker's subprocesses) before the rest of that call's output is dropped and counted."""
OUTPUT_BATCH_BYTES = 65536
"""What all workers together may print during one :meth:`RewardPool.score` call (one training
step's draw); past it output is dropped, and one line at the end of the call says how much."""


@dataclass
class RewardResult:
    """Per-item outcome of :meth:`RewardPool.score`, aligned with its inputs (length N)."""

    rewards: list[float]
    """The reward: ``sum_k weight_k * components[label_k][i]`` (math-verify alone by default:
    the grader's reward), where a term that timed out or raised counts 0.0."""
    timed_out: list[bool]
    """True where a reward of the item ran past ``timeout_s`` and its worker was killed."""
    errors: list[str | None]
    """``"ExcType: message"`` where a reward raised, returned a non-finite or non-number, or its
    worker died, else None; with several rewards, ``"label: ExcType: message"`` joined by
    ``"; "``. Timed-out items have None here: timeouts and errors are counted apart."""
    components: dict[str, list[float]] = field(default_factory=dict)
    """Each reward's own value per item, unweighted, by label (the trainer's ``reward/<label>``);
    0.0 where that reward timed out or raised."""
    component_timed_out: dict[str, list[bool]] = field(default_factory=dict)
    """Per reward label: True where that reward timed out on the item."""
    component_errors: dict[str, list[str | None]] = field(default_factory=dict)
    """Per reward label: that reward's ``"ExcType: message"`` on the item, else None."""
    output_dropped: int = 0
    """Bytes of the rewards' printed output dropped during this call (see
    :data:`OUTPUT_CALL_BYTES`, :data:`OUTPUT_BATCH_BYTES`)."""

    @property
    def num_timeouts(self) -> int:
        """How many items were killed for exceeding the timeout."""
        return sum(self.timed_out)

    @property
    def num_errors(self) -> int:
        """How many items raised in the grader (or lost their worker to a crash)."""
        return sum(e is not None for e in self.errors)


@dataclass
class _Worker:
    """Parent-side handle on one worker process."""

    process: Any  # a multiprocessing Process of the chosen context
    conn: Connection
    group: int = 0
    """Which worker set: the rewards it loaded (see ``RewardPool._group_of``)."""
    output: Connection | None = None
    """Read end of the worker's stdout/stderr pipe (None once it reached EOF)."""
    printed: int = 0
    """Bytes of output read since its current (or last) task was sent."""
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    task: int | None = None
    """Task (in the current ``score`` call) in flight, None when idle; see :class:`_Tasks`."""
    deadline: float = 0.0


def _kill_group(pid: int | None) -> None:
    """SIGKILL the process group (session) a worker leads: the worker and every process its
    rewards started. Harmless when the group is already gone."""
    killpg = getattr(os, "killpg", None)
    if pid is None or killpg is None:
        return
    with contextlib.suppress(OSError):
        killpg(pid, signal.SIGKILL)


def _stop_worker(worker: _Worker) -> None:
    """Kill a worker and its process group if they still run and reap the worker (join), so
    neither a zombie nor an orphaned subprocess of a reward is left behind."""
    # The group first, while its leader's pid is still ours (the worker is not reaped yet).
    _kill_group(worker.process.pid)  # what a reward started outlives the worker otherwise
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join(5.0)
    worker.conn.close()
    if worker.output is not None:
        worker.output.close()
        worker.output = None


def _shutdown(
    workers: list[_Worker], grace_s: float, drain: Callable[[_Worker], None] | None = None
) -> None:
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
            if drain is not None:  # its last words (log totals) are in the pipe
                drain(w)
    while workers:
        _stop_worker(workers.pop())


@dataclass
class _Tasks:
    """Outcomes of one ``score`` call's tasks. Task ``t`` is item ``t // K`` graded by reward
    ``t % K`` (K rewards), so ``values[k::K]`` is reward k over the items."""

    values: list[float]
    timed_out: list[bool]
    errors: list[str | None]

    @classmethod
    def empty(cls, n_tasks: int) -> _Tasks:
        return cls(values=[0.0] * n_tasks, timed_out=[False] * n_tasks, errors=[None] * n_tasks)


class RewardPool:
    """A reusable pool of grading processes; ``score`` grades a batch with per-item timeouts.

    Example::

        with RewardPool(num_workers=4, timeout_s=10.0) as pool:
            result = pool.score(responses, golds)   # RewardResult, aligned with the inputs
            rewards = torch.tensor(result.rewards)  # [N]

        # Several rewards (see strace_ds.rewards.registry for the spec grammar):
        with RewardPool(rewards="math_verify,format:0.1,my_pkg.rewards:length_penalty:-0.5") as p:
            result = p.score(responses, golds, examples)  # examples: one dict per response
            result.components["length_penalty"]            # [N], unweighted

    Args:
        num_workers: worker processes (each grades one item at a time).
        timeout_s: wall-clock limit per item and reward, counted from the moment a worker
            receives it (queueing behind other items does not count). Past it the worker is
            killed and replaced, and that reward of the item scores 0.0 with ``timed_out`` True.
        grader: ``(response, gold) -> float``; must be picklable, i.e. a module-level function
            (it is re-imported by name in each worker). Reported under its function's name.
            Use ``rewards`` instead for anything but a single grader.
        start_method: ``"spawn"`` (default) or ``"forkserver"`` (faster replacements once its
            server is up; the server imports ``__main__`` once).
        start_timeout_s: how long a worker may take to import and report ready before the pool
            gives up with a RuntimeError.
        memory_limit_gib: address space each worker may map beyond what it maps once it has
            loaded the grader (``RLIMIT_AS``, Linux); an item that needs more fails with
            MemoryError (reward 0.0, counted in ``errors``) or, if the allocation kills the
            worker, as ``WorkerDied``. None: no cap.
        cpu_limit_factor: each item may use ``ceil(cpu_limit_factor * timeout_s)`` CPU seconds
            (``RLIMIT_CPU``, Linux) before the kernel ends its worker (``WorkerDied``, SIGXCPU):
            a backstop behind the wall-clock timeout. None: no CPU limit.
        rewards: a ``--reward`` spec such as ``"math_verify,format:0.1"``, or parsed terms
            (:func:`strace_ds.rewards.registry.parse_reward_spec`); every function is imported
            here, so a missing one is a ValueError now, not a failure in the workers. Default
            (neither this nor ``grader``): ``"math_verify"``, the same results as ``grader``'s
            default.

    Not thread-safe: call ``score`` from one thread at a time.
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 10.0,
        grader: Callable[[str, str], float] = grade_answer,
        start_method: str = "spawn",
        start_timeout_s: float = 120.0,
        memory_limit_gib: float | None = DEFAULT_MEMORY_LIMIT_GIB,
        cpu_limit_factor: float | None = DEFAULT_CPU_LIMIT_FACTOR,
        rewards: str | Sequence[RewardTerm] | None = None,
        remote_timeout_s: float = 30.0,
    ) -> None:
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"RewardPool: num_workers must be an int >= 1, got {num_workers!r}")
        if not timeout_s > 0:
            raise ValueError(f"RewardPool: timeout_s must be > 0 seconds, got {timeout_s!r}")
        if not start_timeout_s > 0:
            raise ValueError(f"RewardPool: start_timeout_s must be > 0, got {start_timeout_s!r}")
        for name, value in (
            ("memory_limit_gib", memory_limit_gib),
            ("cpu_limit_factor", cpu_limit_factor),
        ):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"RewardPool: {name} must be > 0 or None (off), got {value!r}")
        if start_method not in START_METHODS:
            raise ValueError(
                f"RewardPool: start_method {start_method!r} is not allowed; choose one of "
                f"{', '.join(START_METHODS)} (fork is unsafe in a process holding torch threads)"
            )
        if rewards is not None and grader is not grade_answer:
            raise ValueError(
                "RewardPool: pass either rewards (a spec of named rewards) or grader, not both; "
                "name a custom grader in the spec as 'package.module:function'"
            )
        fns: list[Any]
        if rewards is None and grader is not grade_answer:
            name = f"{getattr(grader, '__module__', '?')}:{getattr(grader, '__qualname__', '?')}"
            terms, fns = [RewardTerm(name)], [_PairGrader(grader)]
        else:
            loaded = load_rewards(DEFAULT_SPEC if rewards is None else rewards)
            terms, fns = [term for term, _ in loaded], [fn for _, fn in loaded]
        self.terms = terms
        """The rewards graded (names, weights, labels), in the order of ``fns`` in the workers."""
        # Worker sets: the registered rewards (math-verify's verdict among them) never share a
        # process with a user's function, which could otherwise change their verdict (a
        # monkeypatch, a global setting) for the rest of the worker's life.
        # Remote rewards (group -1) are scored from this process, one POST per batch.
        self._group_of = [
            -1 if isinstance(fn, RemoteReward) else 0 if term.name in REWARDS else 1
            for term, fn in zip(terms, fns, strict=True)
        ]
        self._remote: dict[int, RemoteReward] = {}
        for k, fn in enumerate(fns):
            if isinstance(fn, RemoteReward):
                fn.timeout_s = float(remote_timeout_s)
                try:
                    fn.probe()
                except RemoteRewardError as exc:
                    raise ValueError(
                        f"--reward: remote reward {fn.url!r} cannot be used: {exc}; start its "
                        "server or fix the URL"
                    ) from exc
                self._remote[k] = fn
        self._group_bytes: dict[int, bytes] = {}
        for group in sorted(set(self._group_of) - {-1}):
            mine = [fn if g == group else None for fn, g in zip(fns, self._group_of, strict=True)]
            try:
                self._group_bytes[group] = pickle.dumps(mine)
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                raise ValueError(
                    f"RewardPool: grader {grader!r} cannot be sent to worker processes ({exc}); "
                    "pass a function defined at module level (not a lambda or a closure)"
                ) from exc
        self.num_workers = num_workers
        """Workers per worker set (one set for registered rewards, one for user functions)."""
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        cpu_s = None if cpu_limit_factor is None else math.ceil(cpu_limit_factor * timeout_s)
        self.limits = _WorkerLimits(
            memory_bytes=None if memory_limit_gib is None else int(memory_limit_gib * 2**30),
            cpu_s=None if cpu_s is None else max(1, cpu_s),
        )
        """The per-worker limits in force (bytes of address space, CPU seconds per item)."""
        self.num_restarts = 0
        """Workers replaced so far (after timeouts or crashes), over the pool's lifetime."""
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker] = []
        self._closed = False
        self._batch_printed = 0
        self._batch_dropped = 0
        # Reap the workers even if the owner forgets close(); the finalizer holds the list,
        # not self, so it does not keep the pool alive.
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, 0.0)
        for group in self._group_bytes:
            for _ in range(num_workers):
                self._workers.append(self._spawn(group))

    # ----------------------------------------------------------------- lifecycle
    def _spawn(self, group: int) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        out_read, out_write = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, self._group_bytes[group], self.limits, out_write),
            name="strace_ds-reward-worker",
            daemon=True,  # never outlive the trainer
        )
        process.start()
        # Only the child may hold these ends: then the child sees EOF if the parent dies, and
        # the output pipe reaches EOF once the worker and its subprocesses are gone.
        child_conn.close()
        out_write.close()
        return _Worker(process=process, conn=parent_conn, group=group, output=out_read)

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` (hung or dead), reap it, and start a fresh one in its slot."""
        self._drain(worker)  # what it printed before it hung or died
        _stop_worker(worker)
        self._workers[self._workers.index(worker)] = self._spawn(worker.group)
        self.num_restarts += 1

    def wait_ready(self) -> None:
        """Block until every worker has imported the grader and reported ready."""
        self._check_open()
        while not all(w.ready for w in self._workers):
            self._poll(result=None)

    @property
    def labels(self) -> list[str]:
        """The rewards' labels: the keys of :attr:`RewardResult.components`."""
        return [term.label for term in self.terms]

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (they change only when a worker is replaced)."""
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Stop and reap every worker (idempotent). The pool cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            _shutdown(self._workers, grace_s=1.0, drain=self._drain_at_exit)
            self._finalizer.detach()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("RewardPool: the pool is closed; create a new RewardPool")

    # ----------------------------------------------------------------- scoring
    def score(
        self,
        responses: list[str],
        golds: list[str],
        examples: list[dict[str, Any]] | None = None,
        prompts: list[str] | None = None,
    ) -> RewardResult:
        """Grade ``responses[i]`` against ``golds[i]`` with every reward, for all i, concurrently.

        ``examples[i]`` (a dict: the dataset row's other columns) is passed to each reward as
        its third argument; None passes ``{}``. ``prompts[i]`` (the prompt text) reaches the
        rewards that take it (TRL-shaped ones); None passes ``""``. Returns a
        :class:`RewardResult` aligned with the inputs. A timeout or an exception costs that
        reward of that item (0.0, recorded) and never the batch.
        """
        self._check_open()
        _validate_batch(responses, golds, examples)
        rows = [{}] * len(responses) if examples is None else examples
        if prompts is not None and len(prompts) != len(responses):
            raise ValueError(
                f"RewardPool.score: prompts ({len(prompts)}) and responses ({len(responses)}) "
                "must have the same length; repeat each prompt once per sampled response"
            )
        texts = [""] * len(responses) if prompts is None else prompts
        K = len(self.terms)
        tasks = _Tasks.empty(len(responses) * K)
        pending: dict[int, deque[int]] = {g: deque() for g in self._group_bytes}
        for t in range(len(tasks.values)):
            if self._group_of[t % K] != -1:
                pending[self._group_of[t % K]].append(t)
        self._batch_printed = self._batch_dropped = 0
        remote = [
            threading.Thread(target=self._score_remote, daemon=True,
                             args=(k, tasks, responses, golds, rows, texts))
            for k in self._remote
        ]  # fmt: skip
        for thread in remote:
            thread.start()
        try:
            while any(pending.values()) or any(w.task is not None for w in self._workers):
                self._dispatch(pending, responses, golds, rows, texts)
                self._poll(tasks)
        except BaseException:
            # Interrupted (e.g. Ctrl-C): items still in flight would answer into the next call.
            for w in list(self._workers):
                if w.task is not None:
                    self._replace(w)
            raise
        for thread in remote:  # each POST ends within its deadline
            thread.join()
        for w in self._workers:
            self._drain(w, block=False)
        result = self._combine(tasks, len(responses))
        result.output_dropped = self._batch_dropped
        if self._batch_dropped:
            self._print(
                f"[reward workers] {self._batch_dropped} bytes of reward output dropped in this "
                f"batch (kept at most {OUTPUT_CALL_BYTES} bytes per reward call and "
                f"{OUTPUT_BATCH_BYTES} per batch)\n"
            )
        return result

    def _score_remote(
        self,
        k: int,
        tasks: _Tasks,
        responses: list[str],
        golds: list[str],
        examples: list[dict[str, Any]],
        prompts: list[str],
    ) -> None:
        """Remote reward ``k`` over the batch, into ``tasks`` (its slots ``k::K``)."""
        K = len(self.terms)
        values, errors = self._remote[k].score(responses, golds, examples, prompts)
        tasks.values[k::K], tasks.errors[k::K] = values, errors

    def _combine(self, tasks: _Tasks, n: int) -> RewardResult:
        """Per-item results from per-task ones: the weighted sum, and each reward apart."""
        K = len(self.terms)
        labels = self.labels
        values = {label: tasks.values[k::K] for k, label in enumerate(labels)}
        timed_out = {label: tasks.timed_out[k::K] for k, label in enumerate(labels)}
        errors = {label: tasks.errors[k::K] for k, label in enumerate(labels)}
        rewards = [
            sum(term.weight * values[term.label][i] for term in self.terms) for i in range(n)
        ]
        if K == 1:
            row_errors = list(errors[labels[0]])
        else:
            row_errors = [
                "; ".join(f"{label}: {errors[label][i]}" for label in labels if errors[label][i])
                or None
                for i in range(n)
            ]
        return RewardResult(
            rewards=rewards,
            timed_out=[any(timed_out[label][i] for label in labels) for i in range(n)],
            errors=row_errors,
            components=values,
            component_timed_out=timed_out,
            component_errors=errors,
        )

    def _dispatch(
        self,
        pending: dict[int, deque[int]],
        responses: list[str],
        golds: list[str],
        examples: list[dict[str, Any]],
        prompts: list[str],
    ) -> None:
        """Hand the next pending task of its worker set to every ready, idle worker."""
        K = len(self.terms)
        for w in list(self._workers):
            queue = pending[w.group]
            if w.ready and w.task is None and queue:
                t = queue.popleft()
                i, k = divmod(t, K)
                try:
                    w.conn.send((t, k, responses[i], golds[i], examples[i], prompts[i]))
                except (OSError, ValueError):
                    queue.appendleft(t)  # died while idle: the task never started
                    self._replace(w)
                    continue
                w.task, w.deadline, w.printed = t, time.monotonic() + self.timeout_s, 0

    def _poll(self, result: _Tasks | None) -> None:
        """Wait for the next message, death or deadline, and act on everything that fired.

        ``result`` is the batch being scored, None outside ``score`` (then no task is in flight).
        """
        now = time.monotonic()
        deadlines = [w.started + self.start_timeout_s for w in self._workers if not w.ready]
        deadlines += [w.deadline for w in self._workers if w.task is not None]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        handles: list[Any] = [w.conn for w in self._workers]
        handles += [w.process.sentinel for w in self._workers]
        handles += [w.output for w in self._workers if w.output is not None]
        fired = set(wait(handles, timeout))
        for w in list(self._workers):
            if w.output is not None and w.output in fired:
                self._drain(w, block=False)
            if w.conn in fired:
                self._receive(w, result)
            elif w.process.sentinel in fired:
                self._on_death(w, result)
        self._enforce_deadlines(result)

    # ----------------------------------------------------------------- printed output
    def _drain_at_exit(self, w: _Worker) -> None:
        self._batch_printed = w.printed = 0
        self._drain(w)

    def _print(self, text: str) -> None:
        stream = sys.stderr
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.write(text)
                stream.flush()

    def _drain(self, w: _Worker, block: bool = False) -> None:
        """Forward what worker ``w`` (and its subprocesses) printed, within the bounds.

        Each reward call keeps its first :data:`OUTPUT_CALL_BYTES` bytes (a note marks the cut)
        and all calls of one ``score`` their first :data:`OUTPUT_BATCH_BYTES`; the rest is read
        (so the worker never blocks on a full pipe) and counted in ``RewardResult.output_dropped``.
        """
        out = w.output
        if out is None:
            return
        fd = out.fileno()
        for _ in range(64):  # at most 64 reads of 64 KiB per call: the poll loop comes back
            if not block and not wait([out], 0):
                return
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:  # EOF: the worker and everything it started are gone
                out.close()
                w.output = None
                return
            call_room = max(0, OUTPUT_CALL_BYTES - w.printed)
            batch_room = max(0, OUTPUT_BATCH_BYTES - self._batch_printed)
            keep = chunk[: min(call_room, batch_room)]
            w.printed += len(chunk)
            self._batch_printed += len(keep)
            self._batch_dropped += len(chunk) - len(keep)
            if keep:
                self._print(keep.decode("utf-8", errors="replace"))
            # One note per cut call while the batch has room (so the notes are bounded too).
            if len(keep) < len(chunk) and call_room and batch_room:
                self._print(
                    f"\n[reward worker {w.process.pid}] output of this reward call cut (at most "
                    f"{OUTPUT_CALL_BYTES} bytes per call, {OUTPUT_BATCH_BYTES} per batch)\n"
                )

    def _receive(self, w: _Worker, result: _Tasks | None) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            self._on_death(w, result)
            return
        if not w.ready:
            kind, detail = msg
            if kind != "ready":
                self.close()
                raise RuntimeError(
                    "RewardPool: a worker could not load the reward functions (each must import "
                    f"in a fresh process: install its module or put it on PYTHONPATH):\n{detail}"
                )
            w.ready = True
            return
        task, reward, error = msg
        if result is not None and task == w.task:
            result.values[task], result.errors[task] = reward, error
        w.task = None

    def _on_death(self, w: _Worker, result: _Tasks | None) -> None:
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
            why = ""
            sigxcpu = getattr(signal, "SIGXCPU", None)
            if sigxcpu is not None and code == -sigxcpu and self.limits.cpu_s is not None:
                why = f" (SIGXCPU: the item used its {self.limits.cpu_s} s of CPU time)"
            result.errors[w.task] = f"WorkerDied: worker process exited with code {code}{why}"
        self._replace(w)

    def _enforce_deadlines(self, result: _Tasks | None) -> None:
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


def _validate_batch(
    responses: list[str], golds: list[str], examples: list[dict[str, Any]] | None
) -> None:
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
    if examples is None:
        return
    if len(examples) != len(responses):
        raise ValueError(
            f"RewardPool.score: examples ({len(examples)}) and responses ({len(responses)}) must "
            "have the same length; repeat each example's dict once per sampled response"
        )
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise ValueError(
                f"RewardPool.score: examples[{i}] is {type(example).__name__}, expected a dict of "
                "the dataset row's columns (or pass examples=None)"
            )
        try:
            pickle.dumps(example)
        except Exception as exc:
            raise ValueError(
                f"RewardPool.score: examples[{i}] cannot be sent to the grading workers "
                f"({type(exc).__name__}: {exc}); keep plain data (str, numbers, lists, dicts)"
            ) from exc
