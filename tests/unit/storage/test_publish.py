"""Kill-safe directory publishing (``strace_ds.storage.publish``) and the checkpoints that use it.

Unit tests of :func:`publish_dir` / :func:`recover_dir`; real kills (``SIGKILL`` at random
moments of a publish loop, and ``os._exit`` injected between the two renames); and
``save_checkpoint`` interrupted at every filesystem step, after which ``latest`` must load.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from strace_ds.storage.publish import (
    FAULT_ENV,
    FAULT_EXIT_CODE,
    aside_path,
    publish_dir,
    recover_dir,
)

REPO = Path(__file__).resolve().parents[3]
FILES = 24


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(FAULT_ENV, None)
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def _make(path: Path, version: int, files: int = FILES) -> Path:
    """A directory holding ``files`` files stamped ``version`` and, written last, a MANIFEST."""
    path.mkdir(parents=True)
    for i in range(files):
        (path / f"f{i:02d}").write_text(str(version))
    (path / "MANIFEST").write_text(f"{version} {files}")
    return path


def _version(path: Path, files: int = FILES) -> int:
    """The version of a *complete* copy at ``path`` (asserts it is one)."""
    assert path.is_dir(), f"{path} is missing"
    version, count = (int(x) for x in (path / "MANIFEST").read_text().split())
    assert count == files
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted([f"f{i:02d}" for i in range(files)] + ["MANIFEST"]), names
    assert {(path / f"f{i:02d}").read_text() for i in range(files)} == {str(version)}
    return version


# --------------------------------------------------------------------------- unit tests


def test_publish_to_a_new_target(tmp_path: Path) -> None:
    tmp = _make(tmp_path / ".tmp-out", 1)
    publish_dir(tmp, tmp_path / "out")
    assert _version(tmp_path / "out") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_publish_replaces_an_existing_target(tmp_path: Path) -> None:
    target = _make(tmp_path / "out", 1)
    publish_dir(_make(tmp_path / ".tmp-out", 2, files=3), target)
    assert _version(target, files=3) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no aside copy, no tmp left


def test_publish_without_replace_keeps_a_non_empty_target(tmp_path: Path) -> None:
    target = _make(tmp_path / "out", 1)
    tmp = _make(tmp_path / ".tmp-out", 2)
    with pytest.raises(OSError):
        publish_dir(tmp, target, replace=False)
    assert _version(target) == 1 and _version(tmp) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    publish_dir(tmp, empty, replace=False)  # a plain rename succeeds over an empty directory
    assert _version(empty) == 2


def test_recover_puts_an_aside_copy_back(tmp_path: Path) -> None:
    target = tmp_path / "out"
    aside = aside_path(target)
    assert aside == tmp_path / ".out.old"
    recover_dir(target)  # nothing there: nothing to do
    assert list(tmp_path.iterdir()) == []
    _make(aside, 1)  # killed between the renames: only the old copy, aside
    recover_dir(target)
    assert _version(target) == 1 and not aside.exists()
    _make(aside, 0, files=2)  # killed after the new copy went in: the aside copy is stale
    recover_dir(target)
    assert _version(target) == 1 and not aside.exists()
    recover_dir(target)  # idempotent
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_publish_after_an_interrupted_one(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _make(aside_path(target), 1)
    publish_dir(_make(tmp_path / ".tmp-a", 2), target)  # recovers, then replaces
    assert _version(target) == 2
    os.rename(target, aside_path(target))  # as a kill between the renames leaves it
    publish_dir(_make(tmp_path / ".tmp-b", 3), target, replace=False)  # new copy wins
    assert _version(target) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_rename_restores_the_old_copy(tmp_path: Path) -> None:
    target = _make(tmp_path / "out", 1)
    with pytest.raises(FileNotFoundError):
        publish_dir(tmp_path / "no-such-tmp", target)
    assert _version(target) == 1 and not aside_path(target).exists()


# --------------------------------------------------------------------------- real kills

_LOOP = textwrap.dedent(
    """
    import os, shutil, sys, time
    from pathlib import Path
    from strace_ds.storage.publish import aside_path, publish_dir
    target, files = Path(sys.argv[1]), int(sys.argv[2])
    rename = os.rename

    def slow_rename(src, dst):  # widen the window between the two renames, for kills to hit
        rename(src, dst)
        if Path(dst) == aside_path(target):
            time.sleep(0.002)

    os.rename = slow_rename
    for old in target.parent.glob(".tmp-*"):
        shutil.rmtree(old)
    version = int((target / "MANIFEST").read_text().split()[0])
    print("go", flush=True)
    while True:
        version += 1
        tmp = target.parent / f".tmp-{version}"
        tmp.mkdir()
        for i in range(files):
            (tmp / f"f{i:02d}").write_text(str(version))
        (tmp / "MANIFEST").write_text(f"{version} {files}")
        publish_dir(tmp, target)
    """
)


def test_sigkill_at_random_moments_leaves_a_complete_copy(tmp_path: Path) -> None:
    target = _make(tmp_path / "out", 0)
    rng = random.Random(0)
    seen, last = [], 0
    for _ in range(30):
        proc = subprocess.Popen(
            [sys.executable, "-c", _LOOP, str(target), str(FILES)],
            env=_env(), stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline() == "go\n"
        time.sleep(rng.uniform(0.001, 0.04))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        proc.stdout.close()
        seen.append((target.exists(), aside_path(target).exists()))
        assert any(seen[-1]), "neither the target nor an aside copy exists"
        recover_dir(target)
        version = _version(target)  # complete: old or new, never partial
        assert version >= last  # never older than a copy already seen in place
        assert not aside_path(target).exists()
        last = version
    assert last > 0, f"the publish loop never ran: {seen}"
    assert (False, True) in seen, f"no kill landed between the two renames: {seen}"


@pytest.mark.parametrize("fault, expected", [("aside", 1), ("placed", 2)])
def test_injected_exit_between_the_renames(tmp_path: Path, fault: str, expected: int) -> None:
    target = _make(tmp_path / "out", 1)
    _make(tmp_path / ".tmp-out", 2)
    code = "import sys; from strace_ds.storage.publish import publish_dir as p; p(*sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / ".tmp-out"), str(target)],
        env=_env(**{FAULT_ENV: fault}), timeout=60,
    )
    assert proc.returncode == FAULT_EXIT_CODE
    if fault == "aside":  # the old copy is aside, nothing at the target yet
        assert not target.exists() and _version(aside_path(target)) == 1
    else:  # the new copy is in place, the old one not yet deleted
        assert _version(target) == 2 and _version(aside_path(target)) == 1
    recover_dir(target)
    assert _version(target) == expected and not aside_path(target).exists()


# --------------------------------------------------------------------------- checkpoints


class _FakeEngine:
    """What ``save_checkpoint`` / ``load_checkpoint`` use of a DeepSpeed engine, on files."""

    def __init__(self, payload: dict | None = None) -> None:
        self.payload = payload
        self.loaded: dict | None = None

    def save_checkpoint(self, save_dir: str, tag: str, save_latest: bool) -> None:
        assert not save_latest
        out = Path(save_dir) / tag
        out.mkdir(parents=True)
        for i in range(3):
            (out / f"shard_{i}.json").write_text(json.dumps(self.payload))
        (Path(save_dir) / "zero_to_fp32.py").write_text("# helper\n")

    def load_checkpoint(self, load_dir: str, tag: str) -> tuple[str, dict]:
        out = Path(load_dir) / tag
        shards = {(out / f"shard_{i}.json").read_text() for i in range(3)}
        assert len(shards) == 1, "a checkpoint mixing two saves"
        self.loaded = json.loads(shards.pop())
        return str(out), {}


def _save(ckpt_dir: Path, step: int, gen: int, keep_last: int = 2) -> None:
    from strace_ds.storage import checkpoint as ckpt

    state = ckpt.TrainerState(step=step, history=[{"gen": float(gen)}])
    ckpt.save_checkpoint(_FakeEngine({"step": step, "gen": gen}), ckpt_dir, state, keep_last)


def _load_latest(ckpt_dir: Path) -> tuple[int, int]:
    """Load what ``latest`` names, check engine and trainer state agree; (step, gen)."""
    from strace_ds.storage import checkpoint as ckpt

    found = ckpt.find_checkpoint("auto", ckpt_dir)
    assert found is not None
    engine = _FakeEngine()
    state = ckpt.load_checkpoint(engine, found)
    gen = int(state.history[-1]["gen"])
    assert engine.loaded == {"step": state.step, "gen": gen}
    assert found.name == ckpt.tag_for(state.step)
    return state.step, gen


@pytest.fixture
def keep_rng() -> Iterator[None]:
    """``load_checkpoint`` restores RNG states; leave this process's as they were."""
    from strace_ds.storage import checkpoint as ckpt

    saved = ckpt.capture_rng()
    yield
    ckpt.restore_rng(saved)


class _Killed(BaseException):
    """Raised in place of the n-th filesystem mutation: nothing after it runs, as in a kill."""


@contextmanager
def _kill_at(n: int) -> Iterator[list[int]]:
    """Make the ``n``-th call of os.rename / os.replace / shutil.rmtree raise ``_Killed``."""
    calls = [0]
    originals = {(os, "rename"): os.rename, (os, "replace"): os.replace,
                 (shutil, "rmtree"): shutil.rmtree}

    def wrap(fn):
        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                raise _Killed
            return fn(*args, **kwargs)
        return wrapped

    for (mod, name), fn in originals.items():
        setattr(mod, name, wrap(fn))
    try:
        yield calls
    finally:
        for (mod, name), fn in originals.items():
            setattr(mod, name, fn)


@pytest.mark.parametrize("resave", [False, True], ids=["next-step", "same-step"])
def test_save_checkpoint_killed_at_every_step_leaves_latest_loadable(
    tmp_path: Path, keep_rng: None, resave: bool
) -> None:
    base = tmp_path / "base"
    _save(base, step=1, gen=0)
    if resave:
        _save(base, step=2, gen=0)
    old = (2, 0) if resave else (1, 0)
    new = (2, 1)
    outcomes = set()
    for n in range(1, 100):
        ckpt_dir = tmp_path / f"run{n}"
        shutil.copytree(base, ckpt_dir)
        killed = False
        with _kill_at(n) as calls:
            try:
                _save(ckpt_dir, step=2, gen=1, keep_last=1)
            except _Killed:
                killed = True
        got = _load_latest(ckpt_dir)
        assert got in (old, new), (n, got)
        outcomes.add(got)
        # The next save copes with whatever the kill left (staging dir, aside copy).
        _save(ckpt_dir, step=3, gen=2, keep_last=1)
        assert _load_latest(ckpt_dir) == (3, 2)
        assert sorted(p.name for p in ckpt_dir.iterdir()) == [
            "latest", "step_000003", "zero_to_fp32.py"]
        if not killed:
            assert calls[0] < n
            break
    else:
        raise AssertionError("save_checkpoint never completed")
    assert outcomes == {old, new}


@pytest.mark.parametrize("fault, expected_gen", [("aside", 0), ("placed", 1)])
def test_save_checkpoint_exit_mid_replace_leaves_latest_loadable(
    tmp_path: Path, keep_rng: None, fault: str, expected_gen: int
) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    code = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        import test_publish as t
        from pathlib import Path
        d = Path(sys.argv[1])
        t._save(d, step=1, gen=0)
        t._save(d, step=2, gen=0)
        os.environ[{FAULT_ENV!r}] = {fault!r}
        t._save(d, step=2, gen=1)  # re-saving the tag ``latest`` names
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt_dir)], env=_env(), timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == FAULT_EXIT_CODE, proc.stderr[-3000:]
    assert (ckpt_dir / "latest").read_text() == "step_000002"
    assert (ckpt_dir / "step_000002").exists() == (fault == "placed")
    assert _load_latest(ckpt_dir) == (2, expected_gen)
    assert not aside_path(ckpt_dir / "step_000002").exists()


def test_prune_never_deletes_the_checkpoint_latest_names(tmp_path: Path, keep_rng: None) -> None:
    _save(tmp_path, step=20, gen=0)
    _save(tmp_path, step=12, gen=1, keep_last=1)  # an older tag saved after a newer one
    assert _load_latest(tmp_path) == (12, 1)


def _checkpoints(ckpt_dir: Path) -> list[str]:
    """The checkpoints in view, each asserted complete (its manifest verifies)."""
    from strace_ds.storage.manifest import check_manifest

    names = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("step_"))
    for name in names:
        assert check_manifest(ckpt_dir / name) == [], name
    return names


@contextmanager
def _kill_inside_rmtree(n: int) -> Iterator[list[int]]:
    """Make the ``n``-th ``shutil.rmtree`` delete one file of the tree, then raise ``_Killed``:
    a kill in the middle of a deletion."""
    calls, rmtree = [0], shutil.rmtree

    def half(path, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n and Path(path).is_dir():
            first = next((f for f in sorted(Path(path).rglob("*")) if f.is_file()), None)
            if first is not None:
                first.unlink()
            raise _Killed
        return rmtree(path, *args, **kwargs)

    shutil.rmtree = half
    try:
        yield calls
    finally:
        shutil.rmtree = rmtree


def test_prune_killed_at_every_step_leaves_complete_checkpoints(
    tmp_path: Path, keep_rng: None
) -> None:
    """``--keep_last``: a kill at every rename or deletion of the pruning (and of the save
    before it) leaves only complete checkpoints in view, never fewer than the newest one, and
    ``--resume auto`` finds the newest; the next save empties the trash. Killed inside a
    deletion too (one file gone): before, that left a half-deleted checkpoint in view."""
    base = tmp_path / "base"
    for step in range(1, 5):
        _save(base, step=step, gen=0, keep_last=10)
    for kill in (_kill_at, _kill_inside_rmtree):
        _prune_killed(tmp_path / kill.__name__, base, kill)
    assert _checkpoints(base) == [f"step_00000{i}" for i in range(1, 5)]


def _prune_killed(tmp_path: Path, base: Path, kill) -> None:
    done = False
    for n in range(1, 100):
        ckpt_dir = tmp_path / f"run{n}"
        shutil.copytree(base, ckpt_dir)
        with kill(n) as calls:
            try:
                _save(ckpt_dir, step=5, gen=1, keep_last=2)
            except _Killed:
                pass
            else:
                done = calls[0] < n
        left = _checkpoints(ckpt_dir)
        assert "step_000004" in left, (n, left)
        assert _load_latest(ckpt_dir) in ((4, 0), (5, 1)), n
        _save(ckpt_dir, step=6, gen=2, keep_last=2)
        assert _checkpoints(ckpt_dir) == ["step_000005", "step_000006"] or (
            "step_000005" not in left and _checkpoints(ckpt_dir) == ["step_000004", "step_000006"])
        assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")], n
        if done:
            break
    else:
        raise AssertionError("save_checkpoint never completed")


@pytest.mark.parametrize("fault", [f"{p}@{i}" for p in ("prune-aside", "pruned")
                                   for i in (1, 2, 3)])
def test_prune_exit_between_deletions_leaves_latest_loadable(
    tmp_path: Path, keep_rng: None, fault: str
) -> None:
    """A process exit (``os._exit``, no clean-up) injected after the i-th checkpoint is moved
    to the trash or deleted: the checkpoints in view are complete, ``latest`` is the new one,
    ``find_checkpoint("auto")`` returns it, and the next save removes the trash."""
    ckpt_dir = tmp_path / "checkpoints"
    code = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        import test_publish as t
        from pathlib import Path
        d = Path(sys.argv[1])
        for step in range(1, 5):
            t._save(d, step=step, gen=0, keep_last=10)
        os.environ[{FAULT_ENV!r}] = {fault!r}
        t._save(d, step=5, gen=1, keep_last=2)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt_dir)], env=_env(), timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == FAULT_EXIT_CODE, proc.stderr[-3000:]
    point, _, i = fault.partition("@")
    deleted = int(i) - (point == "prune-aside")  # the i-th is in the trash, not yet deleted
    left = _checkpoints(ckpt_dir)
    assert left == [f"step_00000{s}" for s in range(1 + int(i), 6)], left
    trash = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith(".trash-"))
    assert len(trash) == int(i) - deleted
    assert (ckpt_dir / "latest").read_text() == "step_000005"
    from strace_ds.storage import checkpoint as ckpt

    assert ckpt.find_checkpoint("auto", ckpt_dir) == ckpt_dir / "step_000005"
    assert _load_latest(ckpt_dir) == (5, 1)
    _save(ckpt_dir, step=6, gen=2, keep_last=2)
    assert _checkpoints(ckpt_dir) == ["step_000005", "step_000006"]
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")]


def test_prune_keeps_what_latest_names_and_the_newest(tmp_path: Path, keep_rng: None) -> None:
    from strace_ds.storage import checkpoint as ckpt

    for step in range(1, 5):
        _save(tmp_path, step=step, gen=0, keep_last=10)
    (tmp_path / "latest").write_text("step_000002")  # e.g. a rollback someone made by hand
    ckpt._prune(tmp_path, keep_last=1, keep="step_000003")
    assert _checkpoints(tmp_path) == ["step_000002", "step_000003", "step_000004"]
    ckpt._prune(tmp_path, keep_last=1, keep="step_000004")
    assert _checkpoints(tmp_path) == ["step_000002", "step_000004"]


# --------------------------------------------------------------------------- tiny builds


def test_tiny_publish_keeps_a_concurrent_winner(tmp_path: Path) -> None:
    from strace_ds.assets.recipes import arithmetic as tiny

    def build(path: Path, version: int) -> Path:
        _make(path, version)
        (path / tiny.BUILD_INFO).write_text("{}")
        (path / "config.json").write_text("{}")
        return path

    out = build(tmp_path / "out", 1)
    loser = build(tmp_path / ".tmp-a", 2)
    tiny._publish(loser, out, replace=False)  # a complete build is already there: kept
    assert (out / "MANIFEST").read_text().startswith("1 ")
    tiny._publish(loser, out, replace=True)
    assert (out / "MANIFEST").read_text().startswith("2 ")
    stranger = tmp_path / "stranger"
    _make(stranger, 0)
    with pytest.raises(OSError):
        tiny._publish(build(tmp_path / ".tmp-b", 3), stranger, replace=False)
