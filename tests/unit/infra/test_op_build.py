"""Guarded op builds: a stale torch-extensions lock is removed; a live build is waited for."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from strace_ds.op_build import GUARD_FILE, extensions_dir, guarded_op_builds


def test_project_owned_directory_and_stale_lock_removed(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("STRACE_DS_CACHE", str(tmp_path))
    root = extensions_dir()
    assert root.parent == tmp_path / "torch_extensions" and root.name.startswith("torch")
    stale = root / "deepspeed_shm_comm" / "lock"  # what a build killed mid-way leaves
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    said = []
    with guarded_op_builds(log=said.append) as got:
        assert got == root
        assert not stale.exists()
        import os

        assert os.environ["TORCH_EXTENSIONS_DIR"] == str(root)
    assert said == [f"removed a stale build lock left by a killed start-up: {stale}"]
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert extensions_dir() == tmp_path / "mine"  # the user's choice wins


def test_a_live_build_is_waited_for_and_its_lock_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    building = tmp_path / "op" / "lock"
    building.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(tmp_path / GUARD_FILE)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        open({str(building)!r}, "w").close()   # a build in progress
        print("building", flush=True)
        time.sleep(1.0)
        os.unlink({str(building)!r})           # the build finishes and clears its lock
    """)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "building"
    said = []
    with guarded_op_builds(log=said.append, wait_notice_s=0.2):
        assert not building.exists()  # entered once the build was done (it cleared its lock)
    holder.wait(timeout=10)
    # waited, and did not take the live build's lock for a stale one
    assert len(said) == 1 and said[0].startswith("waiting for another process building")
