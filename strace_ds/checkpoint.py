"""Atomic checkpoints and exact resume.

Layout under ``<run_dir>/checkpoints``::

    step_000010/          DeepSpeed engine state (model, optimizer, scheduler shards)
        trainer_state.json    step, data position, RNG states, metrics history
    latest                the tag of the newest complete checkpoint (written last)

A checkpoint is written into ``.tmp-step_000010`` and published with
:func:`strace_ds.publish.publish_dir` only when every rank has finished; ``latest`` is replaced
atomically afterwards, and pruning runs last (never on the tag ``latest`` names). A crash at
any point therefore leaves ``latest`` naming a complete checkpoint. Re-saving an existing tag
moves the old copy aside to ``.step_000010.old`` before the new one is renamed in; a kill in
that window leaves ``step_000010`` missing, and loading (:func:`find_checkpoint`,
:func:`load_checkpoint`) and the next save rename the aside copy back
(:func:`strace_ds.publish.recover_dir`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from strace_ds import distributed as dist_utils
from strace_ds.publish import aside_path, publish_dir, recover_dir

LATEST = "latest"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """What besides the engine is needed to continue a run exactly."""

    step: int = 0
    """Steps completed."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Per-step scalar metrics so far (also what the resume test compares)."""
    rng: dict[str, Any] = field(default_factory=dict)
    """Python, NumPy and torch RNG states of rank 0 (ranks re-seed from the step)."""


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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(engine: Any, ckpt_dir: Path, state: TrainerState, keep_last: int) -> Path:
    """Save the engine and ``state`` atomically; every rank must call it. Returns the dir."""
    tag = tag_for(state.step)
    staging_root = ckpt_dir / f".tmp-{tag}"
    final = ckpt_dir / tag
    if dist_utils.rank() == 0:
        if ckpt_dir.is_dir():
            _tidy(ckpt_dir)
        staging_root.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    engine.save_checkpoint(str(staging_root), tag=tag, save_latest=False)
    dist_utils.barrier()
    if dist_utils.rank() == 0:
        state.rng = capture_rng()
        atomic_write_text(staging_root / tag / STATE_FILE, json.dumps(asdict(state)))
        publish_dir(staging_root / tag, final)  # an old ``final`` is deleted only once replaced
        # DeepSpeed drops its consolidation helper next to the tag; keep one in the root.
        for extra in staging_root.iterdir():
            target = ckpt_dir / extra.name
            if extra.is_file() and not target.exists():
                os.replace(extra, target)
        shutil.rmtree(staging_root, ignore_errors=True)
        atomic_write_text(ckpt_dir / LATEST, tag)
        _prune(ckpt_dir, keep_last, keep=tag)
    dist_utils.barrier()
    return final


def _tidy(ckpt_dir: Path) -> None:
    """What killed saves left: delete staging dirs and ``latest`` temp files, finish
    interrupted publishes (see :mod:`strace_ds.publish`). Rank 0 only, before any rank writes
    into a staging dir."""
    for p in ckpt_dir.iterdir():
        if p.name.startswith(".tmp-step_"):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(f".{LATEST}.") and p.is_file():
            p.unlink(missing_ok=True)  # atomic_write_text's temp file: never read
        elif p.name.startswith(".step_") and p.name.endswith(".old"):
            target = ckpt_dir / p.name[1 : -len(".old")]
            if aside_path(target) == p:
                recover_dir(target)


def _prune(ckpt_dir: Path, keep_last: int, keep: str | None = None) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, never the one tagged ``keep``."""
    tags = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in tags[:-keep_last]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(resume: str, ckpt_dir: Path) -> Path | None:
    """``"auto"``: the ``latest`` checkpoint of this run (None if there is none); else a path.

    A path may be a checkpoint dir (``.../step_000010``) or a checkpoints root with ``latest``.
    """
    if resume == "auto":
        latest = ckpt_dir / LATEST
        if not latest.is_file():
            return None
        found = ckpt_dir / latest.read_text().strip()
        recover_dir(found)
        return found
    path = Path(resume)
    if (path / LATEST).is_file():
        path = path / (path / LATEST).read_text().strip()
    recover_dir(path)
    if not (path / STATE_FILE).is_file():
        raise ValueError(
            f"resume: {resume!r} is not a strace_ds checkpoint (no {STATE_FILE}); pass 'auto' or "
            f"a directory such as {ckpt_dir / tag_for(10)}"
        )
    return path


def load_checkpoint(engine: Any, path: Path) -> TrainerState:
    """Restore the engine from ``path`` (a tag dir) and return the trainer state."""
    recover_dir(path)
    _, client = engine.load_checkpoint(str(path.parent), tag=path.name)
    if client is None and not (path / STATE_FILE).is_file():
        raise ValueError(f"resume: could not load the DeepSpeed checkpoint in {str(path)!r}")
    data = json.loads((path / STATE_FILE).read_text())
    state = TrainerState(**data)
    restore_rng(state.rng)
    return state
