"""DeepSpeed's just-in-time op builds, guarded so that a killed start-up cannot hang later ones.

On CPU, DeepSpeed compiles its shared-memory communication op (``deepspeed_shm_comm``) the
first time a process starts ``torch.distributed`` through it. The build goes through
``torch.utils.cpp_extension``, which marks a build in progress with a ``lock`` file in the
op's build directory and makes every other process wait until that file is gone. A process
killed during the build (SIGKILL, SIGTERM, a preempted job) leaves the file behind, and every
later launch then waits forever.

:func:`guarded_op_builds` prevents that:

* the builds go to a project-owned directory, ``$TORCH_EXTENSIONS_DIR`` when the user set one,
  else ``<cache>/torch_extensions/<torch version>-<python>`` (``<cache>`` is
  ``$STRACE_DS_CACHE`` or ``~/.cache/strace_ds``), so only this project's processes build
  there;
* every such process builds while holding an exclusive ``flock`` on ``.strace_ds-build.lock``
  in that directory. The kernel drops an ``flock`` when its holder dies, so whoever holds it
  knows no build is running: any ``lock`` file left under the directory is stale, and is
  removed with a notice before DeepSpeed looks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

GUARD_FILE = ".strace_ds-build.lock"


def extensions_dir() -> Path:
    """Where this project's processes build torch extensions (see the module docstring)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    import torch

    from strace_ds.cache import cache_root

    cache = cache_root()
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    return cache / "torch_extensions" / tag


@contextlib.contextmanager
def guarded_op_builds(log: Callable[[str], None] = print, wait_notice_s: float = 10.0
                      ) -> Iterator[Path]:  # fmt: skip
    """Hold the build guard for the block (DeepSpeed's start-up): stale build locks removed,
    ``TORCH_EXTENSIONS_DIR`` pointing at :func:`extensions_dir`. Yields that directory."""
    root = extensions_dir()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root)
    fd = os.open(root / GUARD_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, root, log, wait_notice_s)
        for stale in sorted(root.glob("*/lock")):
            stale.unlink(missing_ok=True)
            log(f"removed a stale build lock left by a killed start-up: {stale}")
        yield root
    finally:
        os.close(fd)  # releases the flock


def _lock(fd: int, root: Path, log: Callable[[str], None], wait_notice_s: float) -> None:
    deadline = time.monotonic() + wait_notice_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                log(f"waiting for another process building DeepSpeed ops in {root} (it holds "
                    f"{GUARD_FILE}; a first build takes about a minute on CPU)")  # fmt: skip
                fcntl.flock(fd, fcntl.LOCK_EX)
                return
            time.sleep(0.05)


def prebuild_comm_op(log: Callable[[str], None] = print) -> None:
    """Build (or load the cached) DeepSpeed shared-memory communication op under the guard,
    before ``deepspeed.init_distributed`` loads it again.

    DeepSpeed builds the op inside its process-group start-up, where the ranks also meet: a
    lock held across that would deadlock the ranks of one node. Built here first, with no
    collective involved, DeepSpeed's own load then finds it cached. Only where DeepSpeed would
    build it (the CPU accelerator); elsewhere nothing happens.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return
    with guarded_op_builds(log):
        builder.load(verbose=False)
