"""Atomic checkpoints and exact resume.

Layout under ``<run_dir>/checkpoints``::

    step_000010/          DeepSpeed engine state (model, optimizer, scheduler shards)
        trainer_state.json    step, data position, RNG states, metrics history
    latest                the tag of the newest complete checkpoint (written last)

A checkpoint is written into ``.tmp-step_000010`` and published with
:func:`strace_ds.storage.publish.publish_dir` only when every rank has finished; ``latest`` is
replaced atomically afterwards, and pruning runs last (never on the tag ``latest`` names). A
crash at any point therefore leaves ``latest`` naming a complete checkpoint. Re-saving an
existing tag moves the old copy aside to ``.step_000010.old`` before the new one is renamed in;
a kill in that window leaves ``step_000010`` missing, and loading (:func:`find_checkpoint`,
:func:`load_checkpoint`) and the next save rename the aside copy back
(:func:`strace_ds.storage.publish.recover_dir`).

Every checkpoint carries ``manifest.json`` (:mod:`strace_ds.storage.manifest`: size and CRC-32 of
each file of every rank, written after a barrier inside the staging dir, before publish), and
loading checks it: a checkpoint with flipped bytes, a truncated, empty or missing file, or no
manifest raises :class:`CheckpointError` naming the file and the fallback, never loads. A
resume through ``latest`` (``"auto"`` or a checkpoints root) whose ``latest`` is missing,
unreadable, names no directory or names a damaged checkpoint falls back to the newest complete
(manifest-verified) checkpoint and says so. The manifest also records the files each rank
must have written (:func:`rank_files`), so a checkpoint published without a rank's model or
optimizer shard never verifies.

A save that fails (a full disk, a rank's write error) removes its staging directory on every
rank's behalf and raises :class:`CheckpointSaveError` naming the rank, the path and the free
space (``shutil.disk_usage``); the previous checkpoints and ``latest`` are untouched.

Pruning (``keep_last``) deletes the oldest checkpoints first, never the one just saved (the
tag ``latest`` names) nor the newest ``keep_last``; each is first renamed to a hidden
``.trash-step_...`` (atomic) and then deleted, so a kill between or during deletions leaves
only complete checkpoints in view (the next save removes the trash).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from strace_ds import distributed as dist_utils
from strace_ds.storage.manifest import MANIFEST, check_manifest, write_manifest
from strace_ds.storage.publish import (
    aside_path,
    atomic_write_text,
    fault_point,
    publish_dir,
    recover_dir,
)

LATEST = "latest"
STATE_FILE = "trainer_state.json"
TRASH = ".trash-"
"""Prefix of a checkpoint being pruned (renamed aside, then deleted)."""


class CheckpointError(ValueError):
    """A checkpoint that must not be loaded (damaged, incomplete, unreadable); the message
    names the file(s) and the fallback."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint that could not be saved (nothing published, staging removed); the message
    names the rank, the path, the free space and the checkpoint still in place."""


@dataclass
class TrainerState:
    """What besides the engine is needed to continue a run exactly."""

    step: int = 0
    """Steps completed."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Per-step scalar metrics so far (also what the resume test compares)."""
    rng: dict[str, Any] = field(default_factory=dict)
    """Python, NumPy and torch RNG states of rank 0 (ranks re-seed from the step)."""
    identity: dict[str, Any] | None = None
    """The run's identity (:func:`strace_ds.storage.run_identity.run_identity`), compared on
    resume; None in checkpoints written before it was recorded."""


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def capture_rng() -> dict[str, Any]:
    return {
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state()),
        "torch": torch.get_rng_state().tolist(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    if not state:
        return
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (tuple, list)):
        return [_jsonable(o) for o in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def save_checkpoint(
    engine: Any,
    ckpt_dir: Path,
    state: TrainerState,
    keep_last: int,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Save the engine and ``state`` atomically; every rank must call it. Returns the dir.

    ``extra(tag_dir)`` runs on every rank before the manifest is written: files it adds to
    the staging directory are published (and checksummed) with the checkpoint. A failure on
    any rank (a full disk, ...) removes the staging directory and raises
    :class:`CheckpointSaveError` on every rank; what was published before stays as it was.
    """
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(state.step)
    staging_root = ckpt_dir / f".tmp-{tag}"
    final = ckpt_dir / tag
    is_main = dist_utils.rank() == 0

    def stage() -> None:
        if is_main:
            if ckpt_dir.is_dir():
                _tidy(ckpt_dir)
            staging_root.mkdir(parents=True, exist_ok=True)

    _agree(_attempt(stage), ckpt_dir, staging_root, tag)  # a barrier that carries failures

    def write_engine() -> None:
        engine.save_checkpoint(str(staging_root), tag=tag, save_latest=False)
        if extra is not None:
            extra(staging_root / tag)

    _agree(_attempt(write_engine), ckpt_dir, staging_root, tag)

    def write_state() -> None:
        if is_main:
            state.rng = capture_rng()
            atomic_write_text(staging_root / tag / STATE_FILE, json.dumps(asdict(state)))

    _agree(_attempt(write_state), ckpt_dir, staging_root, tag)
    # Every rank's files are in: hash them, shared out over ranks; rank 0 writes the manifest
    # last, so a published checkpoint always has one. Each rank's DeepSpeed files are required.
    required = rank_files(engine, tag)
    _agree(
        _attempt(lambda: write_manifest(staging_root / tag, required)), ckpt_dir, staging_root, tag
    )

    def publish() -> None:
        if not is_main:
            return
        publish_dir(staging_root / tag, final)  # an old ``final`` is deleted only once replaced
        # DeepSpeed drops its consolidation helper next to the tag; keep one in the root.
        for helper in staging_root.iterdir():
            target = ckpt_dir / helper.name
            if helper.is_file() and not target.exists():
                os.replace(helper, target)
        shutil.rmtree(staging_root, ignore_errors=True)
        atomic_write_text(ckpt_dir / LATEST, tag)
        _prune(ckpt_dir, keep_last, keep=tag)

    _agree(_attempt(publish), ckpt_dir, staging_root, tag)
    return final


def rank_files(engine: Any, tag: str) -> list[str]:
    """The files this rank's DeepSpeed engine writes into a checkpoint's tag dir (names
    relative to it): the model states (rank 0, or every rank under ZeRO-3) and the ZeRO
    optimizer-state shard, as the engine itself names them for its world size and stage.
    Empty for an engine that is not DeepSpeed's."""
    names = []
    try:
        if getattr(engine, "save_non_zero_checkpoint", False) is True:
            names.append(Path(engine._get_ckpt_name("", tag)).name)
        if getattr(engine, "save_zero_checkpoint", False) is True:
            names.append(Path(engine._get_zero_ckpt_name("", tag)).name)
    except AttributeError:
        return []
    return names


def _attempt(fn: Callable[[], Any]) -> tuple[BaseException, str] | None:
    """Run ``fn``; ``None`` when it succeeds, else the exception and its one-line text."""
    try:
        fn()
    except Exception as exc:  # reported by _agree on every rank, after the staging is removed
        return exc, f"{type(exc).__name__}: {exc}".strip()
    return None


def _agree(
    failed: tuple[BaseException, str] | None, ckpt_dir: Path, staging_root: Path, tag: str
) -> None:
    """A barrier that also tells every rank whether any rank failed; if one did, rank 0
    removes the staging dir and every rank raises :class:`CheckpointSaveError`."""
    mine = None
    if failed is not None:
        exc, text = failed
        mine = (
            text,
            str(getattr(exc, "filename", None) or ""),
            isinstance(exc, OSError) and exc.errno == errno.ENOSPC,
        )
    every = dist_utils.all_gather_objects(mine) if dist_utils.world_size() > 1 else [mine]
    bad = [(r, f) for r, f in enumerate(every) if f is not None]
    if not bad:
        return
    if dist_utils.rank() == 0:
        shutil.rmtree(staging_root, ignore_errors=True)
    r, (text, filename, full) = bad[0]
    where = filename or str(staging_root / tag)
    raise CheckpointSaveError(
        f"checkpoint {tag} was not saved: writing {where} failed on rank {r} ({text})"
        f"{'; the disk is full' if full else ''}; {_free_space(ckpt_dir)}. The staging "
        f"directory {staging_root} was removed and {_intact(ckpt_dir)}; free some space or "
        "point --output_dir at a larger disk, then continue with --resume auto"
    ) from (failed[0] if failed is not None else None)


def _free_space(ckpt_dir: Path) -> str:
    """``"1.2 GiB free of 100.0 GiB on <dir>"`` (``shutil.disk_usage``)."""
    path = Path(ckpt_dir)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return f"the free space on {path} is unknown ({exc})"
    return f"{_bytes(usage.free)} free of {_bytes(usage.total)} on {path}"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _intact(ckpt_dir: Path) -> str:
    tag, _ = _read_latest(ckpt_dir) if ckpt_dir.is_dir() else (None, None)
    if tag is not None:
        return f"the previous checkpoint {tag} ({LATEST}) is intact"
    return "no earlier checkpoint was touched"


def _tidy(ckpt_dir: Path) -> None:
    """What killed saves left: delete staging dirs and ``latest`` temp files, finish
    interrupted publishes (see :mod:`strace_ds.storage.publish`). Rank 0 only, before any rank
    writes into a staging dir."""
    for p in ckpt_dir.iterdir():
        if p.name.startswith((".tmp-step_", f"{TRASH}step_")):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(f".{LATEST}.") and p.is_file():
            p.unlink(missing_ok=True)  # atomic_write_text's temp file: never read
        elif p.name.startswith(".step_") and p.name.endswith(".old"):
            target = ckpt_dir / p.name[1 : -len(".old")]
            if aside_path(target) == p:
                recover_dir(target)


def _prune(ckpt_dir: Path, keep_last: int, keep: str | None = None) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, oldest first, never the one tagged
    ``keep`` (just saved and verified) nor the one ``latest`` names. Each goes to a hidden
    trash name first (one atomic rename), so a kill at any point leaves every checkpoint in
    view complete; :func:`_tidy` empties the trash."""
    if keep_last < 1:
        return
    tags = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_"))
    latest, _ = _read_latest(ckpt_dir)
    for old in tags[:-keep_last]:
        if old.name in (keep, latest):
            continue
        trash = ckpt_dir / f"{TRASH}{old.name}"
        shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(old, trash)
        except OSError:
            continue  # left for the next save's pruning: the checkpoint just saved stands
        fault_point("prune-aside")
        shutil.rmtree(trash, ignore_errors=True)
        fault_point("pruned")


def find_checkpoint(
    resume: str, ckpt_dir: Path, log: Callable[[str], None] | None = None
) -> Path | None:
    """``"auto"``: the ``latest`` checkpoint of this run (None if there is none); else a path.

    A path may be a checkpoint dir (``.../step_000010``) or a checkpoints root with ``latest``.
    The checkpoint found is verified against its manifest. Through ``latest`` (``"auto"``, a
    root), a broken ``latest`` or a damaged checkpoint it names falls back to the newest
    complete checkpoint, and ``log`` (default: stderr on rank 0) says so; a damaged checkpoint
    dir given explicitly raises :class:`CheckpointError`. Every rank must call it (the files
    are hashed in shares).
    """
    if resume == "auto":
        return _through_latest(Path(ckpt_dir), log)
    path = Path(resume)
    if (path / LATEST).is_file() or (path.is_dir() and _tags(path) and not _is_tag_dir(path)):
        return _through_latest(path, log)
    recover_dir(path)
    if not (path / STATE_FILE).is_file() and not (path / MANIFEST).is_file():
        raise ValueError(
            f"resume: {resume!r} is not a strace_ds checkpoint (no {STATE_FILE}); pass 'auto' or "
            f"a directory such as {ckpt_dir / tag_for(10)}"
        )
    problems = check_manifest(path)
    if problems:
        raise CheckpointError(_damaged_message(path, problems))
    return path


def read_identity(path: Path) -> dict[str, Any] | None:
    """The run identity a checkpoint (tag dir) recorded, without loading it; None if none."""
    try:
        data = json.loads((Path(path) / STATE_FILE).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # load_checkpoint reports the damage with the fallback
    return data.get("identity") if isinstance(data, dict) else None


def has_checkpoints(ckpt_dir: Path) -> bool:
    """Whether ``ckpt_dir`` holds a checkpoint (published, or named by ``latest``)."""
    ckpt_dir = Path(ckpt_dir)
    return bool(_tags(ckpt_dir)) or (ckpt_dir / LATEST).is_file()


def load_checkpoint(engine: Any, path: Path, verify: bool = True) -> TrainerState:
    """Restore the engine from ``path`` (a tag dir) and return the trainer state.

    ``verify``: check the manifest first (every rank must call it then); pass False for a path
    :func:`find_checkpoint` has just verified. A damaged checkpoint raises
    :class:`CheckpointError` naming the file and the fallback.
    """
    path = Path(path)
    recover_dir(path)
    if verify:
        problems = check_manifest(path)
        if problems:
            raise CheckpointError(_damaged_message(path, problems))
    _, client = engine.load_checkpoint(str(path.parent), tag=path.name)
    if client is None and not (path / STATE_FILE).is_file():
        raise ValueError(f"resume: could not load the DeepSpeed checkpoint in {str(path)!r}")
    try:
        data = json.loads((path / STATE_FILE).read_bytes().decode("utf-8"))
        state = TrainerState(**data)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise CheckpointError(
            _damaged_message(path, [f"{STATE_FILE} is unreadable ({type(exc).__name__}: {exc})"])
        ) from exc
    restore_rng(state.rng)
    return state


# --------------------------------------------------------------------------- verification


def _tags(ckpt_dir: Path) -> list[Path]:
    """The checkpoint dirs under ``ckpt_dir``, newest (highest step) first."""
    if not ckpt_dir.is_dir():
        return []
    for p in ckpt_dir.iterdir():  # finish a publish a kill interrupted (a read-only repair)
        if p.name.startswith(".step_") and p.name.endswith(".old"):
            target = ckpt_dir / p.name[1 : -len(".old")]
            if aside_path(target) == p:
                recover_dir(target)
    return sorted(
        (p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_")),
        key=lambda p: p.name,
        reverse=True,
    )


def _is_tag_dir(path: Path) -> bool:
    return path.name.startswith("step_") or (path / STATE_FILE).exists()


def _read_latest(ckpt_dir: Path) -> tuple[str | None, str | None]:
    """``(tag, None)`` when ``latest`` names an existing checkpoint dir, else ``(None, why)``;
    ``(None, None)`` when there is no ``latest`` file at all."""
    latest = ckpt_dir / LATEST
    if not latest.exists():
        return None, None
    try:
        tag = latest.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{latest} is unreadable ({type(exc).__name__})"
    if not tag:
        return None, f"{latest} is empty"
    if "/" in tag or not tag.startswith("step_") or len(tag) > 64:
        return None, f"{latest} does not hold a checkpoint tag ({tag[:40]!r})"
    recover_dir(ckpt_dir / tag)
    if not (ckpt_dir / tag).is_dir():
        return None, f"{latest} names {tag}, which does not exist"
    return tag, None


def _through_latest(ckpt_dir: Path, log: Callable[[str], None] | None) -> Path | None:
    say = log or _say
    tag, why = _read_latest(ckpt_dir)
    if tag is not None:
        problems = check_manifest(ckpt_dir / tag)
        if not problems:
            return ckpt_dir / tag
        why = f"checkpoint {tag} (named by {LATEST}) is damaged: " + "; ".join(problems)
    elif why is None:
        if not _tags(ckpt_dir):
            return None  # nothing saved yet: a fresh start
        why = f"{ckpt_dir / LATEST} is missing"
    found, skipped = _newest_complete(ckpt_dir, exclude={tag} if tag else set())
    if found is None:
        lines = "".join(f"\n  {name}: " + "; ".join(p) for name, p in skipped.items())
        raise CheckpointError(
            f"resume: {why}, and there is no complete checkpoint in {ckpt_dir} to fall back to:"
            f"{lines or ' (none saved)'}\nMove {ckpt_dir} away to start afresh, or restore a "
            "good copy of a checkpoint."
        )
    note = "".join(f"; {name} is damaged too: " + "; ".join(p) for name, p in skipped.items())
    say(
        f"resume: {why}{note}; falling back to {found.name}, the newest complete checkpoint "
        f"(steps after {int(found.name.split('_')[1])} are re-run)"
    )
    return found


def _newest_complete(
    ckpt_dir: Path,
    exclude: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[Path | None, dict[str, list[str]]]:
    """The newest checkpoint under ``ckpt_dir`` whose manifest verifies, and the problems of
    the newer ones passed over on the way."""
    skipped: dict[str, list[str]] = {}
    for path in _tags(ckpt_dir):
        if path.name in exclude:
            continue
        problems = check_manifest(path)
        if not problems:
            return path, skipped
        skipped[path.name] = problems
    return None, skipped


def _damaged_message(path: Path, problems: list[str]) -> str:
    """``path`` is damaged: which files, and what to resume from instead."""
    found, _ = _newest_complete(path.parent, exclude={path.name})
    if found is not None:
        fallback = (
            f"resume from {found} instead (--resume {found}; --resume auto falls back "
            "to the newest complete checkpoint by itself)"
        )
    else:
        fallback = f"no other complete checkpoint is in {path.parent}"
    legacy = ""
    if any(p.startswith(f"{MANIFEST} is missing") for p in problems):
        legacy = (
            f". A checkpoint saved before manifests existed has none: if you trust it, "
            f"write one with `python -m strace_ds.storage.manifest write {path}`"
        )
    return (
        f"checkpoint {path} is damaged, not loading it: "
        + "; ".join(problems)
        + f". {fallback[0].upper()}{fallback[1:]}{legacy}"
    )


def _say(msg: str) -> None:
    if dist_utils.rank() == 0:
        print(msg, file=sys.stderr, flush=True)
