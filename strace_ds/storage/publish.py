"""Publish a finished directory at its final path, kill-safe at every instant.

A directory (checkpoint, export, weight version, tiny-policy build) is written into a
temporary sibling and then published with :func:`publish_dir`. Deleting the target and then
moving the new copy in would leave *nothing* if the process died in between; instead:

1. the old copy is moved aside with ``os.rename(target, aside)``, where ``aside`` is
   :func:`aside_path` -- ``.<name>.old`` next to ``target``;
2. the new copy is renamed into place with ``os.rename(tmp, target)``;
3. only then is the aside copy deleted.

Each rename is atomic (same filesystem), so at every instant a complete copy -- old or new --
exists at ``target`` or at ``aside``. The states a kill can leave, and what
:func:`recover_dir` does with them:

* ``target`` present (aside absent, or a stale / half-deleted aside): ``target`` is complete
  (it only ever appears by an atomic rename of a finished directory); the aside is deleted.
* ``target`` missing, aside present: killed between steps 1 and 2; the aside copy is complete
  (it was moved whole) and is renamed back to ``target``.

Readers call :func:`recover_dir` before looking at ``target`` (``publish_dir`` does so too).
Single-writer per target: two processes *replacing* the same target at once share one aside
name and are not serialised (every caller here has one writer: rank 0, or the rollout engine).

For tests, ``STRACE_DS_PUBLISH_FAULT=aside`` (or ``placed``) makes the process ``os._exit``
right after step 1 (or step 2), simulating a kill in the worst windows. Other writers name
their own points (:func:`fault_point`; checkpoint pruning: ``prune-aside`` after a checkpoint
is renamed to the trash, ``pruned`` after it is deleted), and ``POINT@N`` exits the N-th time
the point is reached (``pruned@2``: between the second and third deletion).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

FAULT_ENV = "STRACE_DS_PUBLISH_FAULT"
"""Fault injection for tests: ``aside`` exits after step 1, ``placed`` after step 2; any
point of :func:`fault_point`, ``POINT@N`` for its N-th passage."""
FAULT_EXIT_CODE = 86
"""Exit status of an injected fault."""


def aside_path(target: Path) -> Path:
    """Where the old copy of ``target`` waits while the new one is moved in: ``.<name>.old``."""
    target = Path(target)
    return target.with_name(f".{target.name}.old")


def recover_dir(target: Path) -> None:
    """Repair what a kill inside :func:`publish_dir` left: afterwards ``target`` holds a complete
    copy if any exists, and no aside copy remains. Safe to call anytime, also concurrently."""
    target = Path(target)
    aside = aside_path(target)
    if not aside.exists():
        return
    if not target.exists():
        try:
            os.rename(aside, target)
            return
        except FileNotFoundError:
            return  # another reader recovered it first
        except OSError:
            if not target.exists():
                raise
    shutil.rmtree(aside, ignore_errors=True)  # target is complete: the aside copy is stale


def publish_dir(tmp: Path, target: Path, replace: bool = True) -> None:
    """Rename the finished directory ``tmp`` to ``target`` (same filesystem), atomically.

    ``replace=True``: an existing ``target`` is replaced (moved aside, new moved in, old
    deleted; see the module docstring). ``replace=False``: a plain ``os.rename``, which fails
    with ``OSError`` if ``target`` is a non-empty directory (the caller decides whether the
    copy already there wins); it still succeeds over an empty one.
    """
    tmp, target = Path(tmp), Path(target)
    if not replace:
        os.rename(tmp, target)
        recover_dir(target)  # drops a stale aside left by an earlier killed replace
        return
    recover_dir(target)
    aside = aside_path(target)
    if target.exists():
        os.rename(target, aside)
        _fault("aside")
        try:
            os.rename(tmp, target)
        except OSError:
            recover_dir(target)  # put the old copy back before reporting the failure
            raise
        _fault("placed")
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, target)


_passages: dict[str, int] = {}


def fault_point(point: str) -> None:
    """Exit the process (``os._exit(FAULT_EXIT_CODE)``, as a kill) when ``FAULT_ENV`` names
    ``point`` (or ``point@N`` and this is its N-th passage); otherwise nothing."""
    want = os.environ.get(FAULT_ENV)
    if not want or want.partition("@")[0] != point:
        return
    _passages[point] = _passages.get(point, 0) + 1
    _, at, n = want.partition("@")
    if not at or int(n) == _passages[point]:
        os._exit(FAULT_EXIT_CODE)


_fault = fault_point


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # a full disk leaves no temp file behind
        raise
