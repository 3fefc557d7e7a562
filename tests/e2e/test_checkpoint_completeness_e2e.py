"""A checkpoint is complete only with every rank's DeepSpeed files, on a real two-rank run.

Before, a checkpoint whose manifest listed only ``trainer_state.json`` (published without the
ranks' model and optimizer shards) verified ("every file matches") and resuming ended in a
bare DeepSpeed ``AssertionError``. Now the manifest records the files each rank must have
written (``strace_ds.storage.checkpoint.rank_files``), ``check`` names the missing shard and its
rank, and ``--resume auto`` falls back to the newest complete checkpoint. The fast tests:
``tests/unit/storage/test_checkpoint_completeness.py``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import train_run
from helpers.run_state import _unlist

from strace_ds.storage.manifest import MANIFEST, check_manifest

REPO = Path(__file__).resolve().parents[2]
OPTIM = "zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
MODEL = "zero_pp_rank_{r}_mp_rank_00_model_states.pt"

SMALL = [
    "--prompts_per_step", "4", "--group_size", "2", "--max_new_tokens", "16",
    "--mini_batches", "1", "--micro_batch_size", "4", "--reward_workers", "1",
    "--eval_every", "-1", "--image_every", "0", "--sample_every", "0", "--export", "false",
    "--ds_config", str(REPO / "ds_configs" / "zero3.json"),
]


def _check_cli(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "strace_ds.storage.manifest", "check", str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_missing_rank_shards_fail_verification_and_resume_falls_back(
    tiny_policy: Path, tmp_path: Path
) -> None:
    launcher = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2",
                "--master_port", "29541"]
    common = ["--model", str(tiny_policy), "--output_dir", "out", "--log_dir", "runs",
              "--run_name", "r", "--loss", "grpo", "--steps", "3", "--save_every", "1",
              "--keep_last", "3", *SMALL]
    train_run._train([*common, "--stop_after", "2"], cwd=tmp_path, launcher=launcher, timeout=900)
    ckpts = tmp_path / "out" / "r" / "checkpoints"
    step2 = ckpts / "step_000002"
    record = json.loads((step2 / MANIFEST).read_text())["ranks"]
    assert record["world_size"] == 2
    assert {r: sorted(f) for r, f in record["files"].items()} == {
        str(r): sorted([OPTIM.format(r=r), MODEL.format(r=r)]) for r in (0, 1)}
    assert check_manifest(step2) == []

    # Rank 1's optimizer shard deleted: named with its rank.
    spare = tmp_path / "spare"
    shutil.copytree(step2, spare)
    (spare / OPTIM.format(r=1)).unlink()
    assert check_manifest(spare) == [
        f"{OPTIM.format(r=1)} (rank 1's optimizer state) is missing"]

    # Half-published: rank 1's files absent and not in the manifest (before: verified fine).
    half = tmp_path / "half"
    shutil.copytree(step2, half)
    _unlist(half, OPTIM.format(r=1), MODEL.format(r=1))
    problems = check_manifest(half)
    assert len(problems) == 2 and all("rank 1" in p and "published without" in p
                                      for p in problems), problems
    proc = _check_cli(half)
    assert proc.returncode == 1 and OPTIM.format(r=1) in proc.stdout, proc.stdout

    # Only trainer_state.json and a manifest without the ranks record (the reported case).
    bare = tmp_path / "bare"
    shutil.copytree(step2, bare)
    _unlist(bare, *(n for r in (0, 1) for n in (OPTIM.format(r=r), MODEL.format(r=r))),
            ranks_record=False)
    assert sorted(p.name for p in bare.iterdir()) == [MANIFEST, "trainer_state.json"]
    proc = _check_cli(bare)
    assert proc.returncode == 1 and "no DeepSpeed model states" in proc.stdout, proc.stdout

    # The real checkpoint with rank 0's model states gone: --resume auto falls back a step.
    _unlist(step2, MODEL.format(r=0))
    done = train_run._train([*common, "--resume", "auto"], cwd=tmp_path, launcher=launcher,
                            timeout=900)
    out = done.stdout + done.stderr
    assert MODEL.format(r=0) in out and "falling back to step_000001" in out, out[-3000:]
    state = json.loads((ckpts / "step_000003" / "trainer_state.json").read_text())
    assert state["step"] == 3
    assert check_manifest(ckpts / "step_000003") == []
