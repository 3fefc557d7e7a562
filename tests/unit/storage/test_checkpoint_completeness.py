"""A checkpoint verifies only with every rank's DeepSpeed files, and a save that fails (a full
disk) says where and how much space is left, removes its staging directory and leaves the
previous checkpoint loadable.

A file-based engine that names its files as DeepSpeed does (``_get_ckpt_name``,
``_get_zero_ckpt_name``, ``save_non_zero_checkpoint``, ``save_zero_checkpoint``) stands in for
the real one; ``tests/e2e/test_checkpoint_completeness_e2e.py`` deletes shards of a real
two-rank checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.run_state import _unlist

from strace_ds.storage import checkpoint as ckpt
from strace_ds.storage.manifest import MANIFEST, ManifestError, check_manifest, write_manifest

REPO = Path(__file__).resolve().parents[3]
OPTIM = "zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
MODEL = "zero_pp_rank_{r}_mp_rank_00_model_states.pt"


class _ZeroEngine:
    """ZeRO-3 on files: this rank writes its model-states and optimizer shards, named by the
    same methods DeepSpeed's engine has; ``skip`` names a file it claims but does not write,
    ``fail`` an exception raised half-way through the optimizer shard."""

    save_non_zero_checkpoint = True
    save_zero_checkpoint = True

    def __init__(self, step: int, rank: int = 0, skip: str | None = None,
                 fail: BaseException | None = None) -> None:
        self.step, self.rank, self.skip, self.fail = step, rank, skip, fail

    def _get_ckpt_name(self, save_dir: str, tag: str) -> str:
        return os.path.join(save_dir, tag, MODEL.format(r=self.rank))

    def _get_zero_ckpt_name(self, save_dir: str, tag: str) -> str:
        return os.path.join(save_dir, tag, OPTIM.format(r=self.rank))

    def save_checkpoint(self, save_dir: str, tag: str, save_latest: bool) -> None:
        out = Path(save_dir) / tag
        out.mkdir(parents=True, exist_ok=True)
        for path in (self._get_ckpt_name(save_dir, tag), self._get_zero_ckpt_name(save_dir, tag)):
            if Path(path).name == self.skip:
                continue
            with open(path, "wb") as fh:
                fh.write(bytes([self.step]) * 2644)
                if self.fail is not None and "optim" in path:
                    raise self.fail
                fh.write(bytes([self.step]) * 108)

    def load_checkpoint(self, load_dir: str, tag: str) -> tuple[str, dict]:
        return str(Path(load_dir) / tag), {}


@pytest.fixture(autouse=True)
def keep_rng() -> Iterator[None]:
    saved = ckpt.capture_rng()
    yield
    ckpt.restore_rng(saved)


def _save(ckpt_dir: Path, step: int, **engine) -> Path:
    state = ckpt.TrainerState(step=step, history=[{"step": float(step)}])
    return ckpt.save_checkpoint(_ZeroEngine(step, **engine), ckpt_dir, state, keep_last=5)


# --------------------------------------------------------------------------- every rank's files


def test_manifest_records_the_files_each_rank_must_write(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)
    record = json.loads((path / MANIFEST).read_text())["ranks"]
    assert record == {"world_size": 1, "files": {"0": [MODEL.format(r=0), OPTIM.format(r=0)]}}
    assert check_manifest(path) == []


@pytest.mark.parametrize("name", [OPTIM.format(r=0), MODEL.format(r=0)])
def test_checkpoint_published_without_a_rank_file_never_verifies(tmp_path: Path,
                                                                  name: str) -> None:
    _save(tmp_path, 1)
    path = _save(tmp_path, 2)
    _unlist(path, name)  # before: its manifest matched every file it listed
    problems = check_manifest(path)
    assert len(problems) == 1 and problems[0].startswith(f"{name} (rank 0's "), problems
    assert "published without rank 0's files" in problems[0]
    found = ckpt.find_checkpoint("auto", tmp_path, log=(said := []).append)
    assert found == tmp_path / "step_000001"
    assert name in said[0] and "falling back to step_000001" in said[0], said
    with pytest.raises(ckpt.CheckpointError, match=name):
        ckpt.find_checkpoint(str(path), tmp_path)


def test_only_state_and_manifest_never_verifies(tmp_path: Path) -> None:
    """The reported case: a checkpoint dir holding ``trainer_state.json`` and a manifest listing
    only it (no ranks record, as ``manifest write`` or older code wrote) fails, naming the
    missing weights; the ``check`` command exits 1."""
    path = _save(tmp_path, 1)
    _unlist(path, MODEL.format(r=0), OPTIM.format(r=0), ranks_record=False)
    assert sorted(p.name for p in path.iterdir()) == [MANIFEST, ckpt.STATE_FILE]
    problems = check_manifest(path)
    assert len(problems) == 1 and "no DeepSpeed model states" in problems[0], problems
    proc = subprocess.run([sys.executable, "-m", "strace_ds.storage.manifest", "check", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no DeepSpeed model states" in proc.stdout, proc.stdout


def test_without_a_ranks_record_every_rank_up_to_the_highest_is_required(tmp_path: Path) -> None:
    root = tmp_path / "step_000003"
    root.mkdir()
    (root / ckpt.STATE_FILE).write_text("{}")
    for r in (0, 2):  # rank 1's shards never arrived
        (root / OPTIM.format(r=r)).write_bytes(b"o")
        (root / MODEL.format(r=r)).write_bytes(b"m")
    with pytest.raises(ManifestError, match="rank 1's model states"):
        write_manifest(root)  # also what `manifest write DIR` runs: it refuses
    assert not (root / MANIFEST).exists()
    for r in (1,):
        (root / OPTIM.format(r=r)).write_bytes(b"o")
    with pytest.raises(ManifestError) as info:
        write_manifest(root)
    assert str(info.value).count("is missing") == 1 and MODEL.format(r=1) in str(info.value)
    (root / MODEL.format(r=1)).write_bytes(b"m")
    write_manifest(root)
    assert check_manifest(root) == []
    data = json.loads((root / MANIFEST).read_text())
    del data["files"][OPTIM.format(r=2)]
    (root / MANIFEST).write_text(json.dumps(data))
    assert check_manifest(root) == [f"{OPTIM.format(r=2)} (rank 2's optimizer state) is missing"]


def test_save_refuses_a_rank_file_that_was_not_written(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    with pytest.raises(ckpt.CheckpointSaveError) as info:
        _save(tmp_path, 2, skip=OPTIM.format(r=0))
    msg = str(info.value)
    assert OPTIM.format(r=0) in msg and "rank 0's optimizer state" in msg, msg
    assert "was not written" in msg and "step_000001 (latest) is intact" in msg, msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000001"]
    assert ckpt.find_checkpoint("auto", tmp_path) == tmp_path / "step_000001"


# --------------------------------------------------------------------------- a full disk


@pytest.mark.parametrize("error", ["enospc", "torch"])
def test_disk_full_while_the_engine_saves(tmp_path: Path, error: str) -> None:
    """The engine's write fails (``OSError(ENOSPC)``, or torch's zip writer's ``unexpected
    pos``): the error names the path and the free space, the staging directory is gone and
    ``latest`` still loads."""
    _save(tmp_path, 1)
    staging = tmp_path / ".tmp-step_000002"
    target = staging / "step_000002" / OPTIM.format(r=0)
    fail = (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) if error == "enospc"
            else RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 2752 "
                              "vs 2644"))
    with pytest.raises(ckpt.CheckpointSaveError) as info:
        _save(tmp_path, 2, fail=fail)
    msg = str(info.value)
    free = shutil.disk_usage(tmp_path).free
    assert "checkpoint step_000002 was not saved" in msg and "failed on rank 0" in msg, msg
    assert str(target if error == "enospc" else staging / "step_000002") in msg, msg
    said = re.search(r"([0-9.]+) (MiB|GiB) free of [0-9.]+ \w+ on (\S+)\.", msg)
    assert said and said.group(3) == str(tmp_path), msg
    told = float(said.group(1)) * 2 ** (20 if said.group(2) == "MiB" else 30)
    assert abs(told - free) <= 0.05 * free + 2**26, (told, free)  # others write meanwhile
    assert ("the disk is full" in msg) == (error == "enospc"), msg
    assert ("unexpected pos" in msg) == (error == "torch"), msg
    assert "step_000001 (latest) is intact" in msg and "--output_dir" in msg, msg
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000001"]
    assert ckpt.find_checkpoint("auto", tmp_path) == tmp_path / "step_000001"
    assert _save(tmp_path, 2) == tmp_path / "step_000002"  # space freed: the next save works


@pytest.mark.parametrize("victim", [ckpt.STATE_FILE, MANIFEST])
def test_disk_full_while_writing_state_or_manifest(tmp_path: Path, monkeypatch,
                                                   victim: str) -> None:
    _save(tmp_path, 1)
    fsync = os.fsync

    def full(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{victim}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ckpt.CheckpointSaveError, match="the disk is full") as info:
        _save(tmp_path, 2)
    assert "free of" in str(info.value)
    monkeypatch.setattr(os, "fsync", fsync)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000001"]
    assert ckpt.find_checkpoint("auto", tmp_path) == tmp_path / "step_000001"
