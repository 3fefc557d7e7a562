"""Start, health-check and stop a real SGLang server in its own virtualenv.

SGLang lives in a separate environment (``scripts/setup_sglang_env.sh``; it pins torch and
transformers versions the trainer does not use), so the server is always a subprocess of that
environment's Python and the trainer talks to it over HTTP only. :class:`SGLangServer` is what
``scripts/launch_sglang.py`` and the trainer's ``--sglang-launch PYTHON`` both use::

    with SGLangServer("/path/.venv-sglang/bin/python", model_dir, device="cpu") as server:
        engine = SGLangRolloutEngine(server.url, weights_dir="runs/x/weights")

The server runs in its own process group (``start_new_session``), so :meth:`SGLangServer.stop`
reaches SGLang's scheduler and detokenizer subprocesses too; it is also stopped at interpreter
exit (``atexit``) and, on Linux with util-linux's ``setpriv``, when the Python thread that
started it dies, even by SIGKILL (``PR_SET_PDEATHSIG``: start it from the main thread).
Signal handlers are left to the caller: ``scripts/launch_sglang.py`` turns SIGINT/SIGTERM into
a clean stop.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import requests

CPU_DEFAULT_ARGS: tuple[tuple[str, str | None], ...] = (
    ("--dtype", "float32"),
    ("--sleep-on-idle", None),
    ("--max-total-tokens", "4096"),
)
"""Extra flags on CPU, measured in docs/STACK_ON_CPU.md: float32 (the torch-native CPU
path), ``--sleep-on-idle`` (else an idle scheduler spins a core at 100%), and a small KV pool
(SGLang sizes it from free GPU memory otherwise). Each is overridden by an explicit one."""


class SGLangServerError(RuntimeError):
    """The server could not be started, died, or did not become healthy in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (another process may still take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _flag_names(args: Sequence[str]) -> set[str]:
    """``{"--dtype", ...}`` for ``["--dtype", "float32", "--x=1"]``."""
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def _die_with_parent_prefix() -> list[str]:
    """``setpriv --pdeathsig TERM`` (util-linux) when available: the kernel then SIGTERMs the
    server when the thread that started it exits, even on SIGKILL of the trainer. Done with a
    wrapper rather than ``preexec_fn``, which is unsafe in a process with threads."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM"] if setpriv and sys.platform.startswith("linux") else []


def tail(path: Path | str, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class SGLangServer:
    """A ``python -m sglang.launch_server`` subprocess; a context manager.

    Args:
        python: the SGLang environment's interpreter (e.g. ``.venv-sglang/bin/python``).
        model_path: Hugging Face model directory (or hub id, on machines that reach the hub).
        port: HTTP port; a free one is chosen when None.
        host: interface to bind; ``127.0.0.1`` keeps it local, ``0.0.0.0`` serves other nodes.
        device: ``"cpu"`` (sets ``SGLANG_USE_CPU_ENGINE=1`` and :data:`CPU_DEFAULT_ARGS`) or
            ``"cuda"``.
        extra_args: further ``launch_server`` flags, e.g. ``["--mem-fraction-static", "0.5"]``;
            they override the CPU defaults of the same name.
        weight_version: passed as ``--weight-version`` so the first answers are stamped with it
            (what :class:`~strace_ds.rollout.sglang.SGLangRolloutEngine` expects); None keeps
            SGLang's ``"default"``.
        log_path: where the server's stdout+stderr go; a temporary file when None.
        startup_timeout_s: :meth:`wait_healthy`'s default limit (a tiny model on 2 CPU cores
            takes 25-90 s; a large model on GPUs several minutes).
        env: extra environment variables for the server.
    """

    def __init__(
        self,
        python: str | Path,
        model_path: str | Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        device: str = "cpu",
        extra_args: Sequence[str] = (),
        weight_version: int | None = 0,
        log_path: str | Path | None = None,
        startup_timeout_s: float = 600.0,
        env: dict[str, str] | None = None,
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise ValueError(f"SGLangServer: device must be 'cpu' or 'cuda', got {device!r}")
        self.python = Path(python)
        if not self.python.exists():
            raise SGLangServerError(
                f"SGLangServer: no SGLang python at {self.python}; build the environment with "
                "`bash scripts/setup_sglang_env.sh` (--cpu or --gpu) first"
            )
        self.model_path = str(model_path)
        self.host = host
        self.port = port if port is not None else free_port(host if host != "0.0.0.0" else "")
        self.device = device
        self.extra_args = list(extra_args)
        self.weight_version = weight_version
        self.startup_timeout_s = startup_timeout_s
        self.env = dict(env or {})
        self.log_path = (
            Path(log_path)
            if log_path
            else Path(tempfile.mkstemp(prefix=f"sglang-{self.port}-", suffix=".log")[1])
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` for clients (``127.0.0.1`` when bound to all interfaces)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        """The full ``launch_server`` command line."""
        args = [
            str(self.python),
            "-m",
            "sglang.launch_server",
            "--model-path",
            self.model_path,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--device",
            self.device,
            # The engine sends token ids and reads token ids: no tokenizer/detokenizer work.
            "--skip-tokenizer-init",
        ]
        if self.weight_version is not None:
            args += ["--weight-version", str(self.weight_version)]
        if self.device == "cpu":
            given = _flag_names(self.extra_args)
            for flag, value in CPU_DEFAULT_ARGS:
                if flag not in given:
                    args += [flag] if value is None else [flag, value]
        return args + self.extra_args

    def start(self) -> SGLangServer:
        """Start the process (returns at once; see :meth:`wait_healthy`)."""
        if self.proc is not None:
            raise SGLangServerError(f"SGLangServer at {self.url} was already started")
        env = {**os.environ, **self.env}
        if self.device == "cpu":
            env.setdefault("SGLANG_USE_CPU_ENGINE", "1")  # else SGLang imports vllm on CPU
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            _die_with_parent_prefix() + self.command(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # own process group: stop() reaches SGLang's children
        )
        atexit.register(self.stop)
        return self

    def wait_healthy(self, timeout_s: float | None = None) -> SGLangServer:
        """Poll ``GET /health`` until it answers 200; raise with the log tail on death/timeout."""
        if self.proc is None:
            raise SGLangServerError("SGLangServer.wait_healthy() called before start()")
        limit = self.startup_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while True:
            code = self.proc.poll()
            if code is not None:
                raise SGLangServerError(
                    f"SGLang server for {self.model_path} exited with code {code} before it "
                    f"became healthy at {self.url}. Last lines of {self.log_path}:\n"
                    f"{tail(self.log_path)}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                log_tail = tail(self.log_path)
                self.stop()
                raise SGLangServerError(
                    f"SGLang server at {self.url} was not healthy after {limit:.0f} s (stopped "
                    f"it). Last lines of {self.log_path}:\n{log_tail}"
                )
            time.sleep(1.0)

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # SGLang's children can outlive their parent for a moment: sweep the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            atexit.unregister(self.stop)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> SGLangServer:
        self.start()
        try:
            return self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
