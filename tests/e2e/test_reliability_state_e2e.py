"""Reliability of a run's state end to end through ``scripts/train.py``: a corrupted checkpoint
is skipped by ``--resume auto`` and TensorBoard logs each step once; a dataset whose golds do
not parse stops the start. The fast tests: ``tests/unit/storage/test_reliability_state.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import train_run
from helpers.run_state import BAD_GOLDS, _events, _flip, _jsonl

from strace_ds.storage import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]

SMALL = [
    "--prompts_per_step", "8", "--group_size", "4", "--max_new_tokens", "24",
    "--mini_batches", "2", "--micro_batch_size", "8", "--reward_workers", "1",
    "--eval_every", "-1", "--image_every", "1", "--sample_every", "1",
    "--ds_config", str(REPO / "ds_configs" / "zero3.json"),
]



def _train(args: list[str], cwd: Path, check: bool = True):
    """``scripts/train.py`` with these tests' 900 s limit."""
    return train_run._train(args, cwd, timeout=900, check=check)


@pytest.mark.slow
def test_corrupted_checkpoint_end_to_end(tiny_policy: Path, tmp_path: Path) -> None:
    """Train, stop; flip 64 bytes of the step-2 fp32 weights/optimizer file; --resume auto
    falls back to step 1 and says so, re-runs step 2, and TensorBoard has each step once."""
    from strace_ds.storage.manifest import check_manifest

    common = ["--model", str(tiny_policy), "--output_dir", "out", "--log_dir", "runs",
              "--run_name", "r", "--loss", "grpo", "--steps", "3", "--save_every", "1",
              "--keep_last", "3", *SMALL]
    _train([*common, "--stop_after", "2"], cwd=tmp_path)
    ckpts = tmp_path / "out" / "r" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_000002"
    assert check_manifest(ckpts / "step_000001") == [] == check_manifest(ckpts / "step_000002")
    biggest = max((ckpts / "step_000002").iterdir(), key=lambda p: p.stat().st_size)
    assert "optim_states" in biggest.name  # ZeRO-3: fp32 master weights + Adam moments
    _flip(biggest)

    done = _train([*common, "--resume", "auto"], cwd=tmp_path)
    out = done.stdout + done.stderr
    assert biggest.name in out and "falling back to" in out and "step_000001" in out
    assert "resumed from" in out
    state = json.loads((ckpts / "step_000003" / ckpt.STATE_FILE).read_text())
    assert state["step"] == 3
    assert check_manifest(ckpts / "step_000003") == []
    assert check_manifest(tmp_path / "out" / "r" / "final") == []  # the export has one too

    scalars, hists = _events(tmp_path / "runs" / "r")
    assert scalars, "no scalars logged"
    for tag, points in scalars.items():
        assert [s for s, _ in points] == [1, 2, 3], tag
    for tag, steps in hists.items():
        assert steps == [1, 2, 3], tag
    # step 2's point is the re-run's (the one the final history holds), not the old one
    rerun = [h for h in state["history"] if "reward/mean" in h][1]
    assert scalars["reward/mean"][1][1] == pytest.approx(rerun["reward/mean"])



@pytest.mark.slow
def test_dataset_whose_golds_do_not_parse_aborts_at_start_up(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "bad.jsonl", BAD_GOLDS * 6)
    proc = _train(["--dataset", str(data), "--output_dir", "out", "--log_dir", "runs", *SMALL],
                  cwd=tmp_path, check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert "36 of 36" in err and "max_bad_gold_frac" in err, err[-3000:]
    assert not (tmp_path / "out").exists()

