"""Running ``scripts/train.py`` in tests and reading what it wrote: the small run's flags, the
subprocess call, the run's metrics.jsonl, the checkpoint's state and the TensorBoard scalars.
Shared by the end-to-end and SGLang tiers (the trainer, asynchronous, KL, reward,
dynamic-sampling and corrupted-checkpoint tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "scripts" / "train.py"

SMALL = [
    "--steps",
    "3",
    "--prompts_per_step",
    "8",
    "--group_size",
    "4",
    "--max_new_tokens",
    "32",
    "--mini_batches",
    "2",
    "--micro_batch_size",
    "8",
    "--eval_size",
    "16",
    "--reward_workers",
    "1",
    "--ds_config",
    str(REPO / "ds_configs" / "zero3.json"),
    "--image_every",
    "1",
    "--sample_every",
    "1",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def _train(args: list[str], cwd: Path, launcher: list[str] | None = None, timeout: int = 600,
           check: bool = True) -> subprocess.CompletedProcess:
    """``scripts/train.py args`` (under ``launcher`` if given) in ``cwd``; fails the test with the
    output tails unless it exits 0 (``check=False``: returns the process whatever it did)."""
    cmd = (launcher or [sys.executable]) + [str(TRAIN), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def _history(run_dir: Path) -> list[dict]:
    """The run's history as it wrote it: ``<run_dir>/metrics.jsonl`` (a ``step`` on each training
    line, ``eval_step`` on each evaluation)."""
    from strace_ds.train.monitor import read_history

    return read_history(run_dir)


def _state(run_dir: Path) -> dict:
    ckpt = run_dir / "checkpoints"
    tag = (ckpt / "latest").read_text().strip()
    return json.loads((ckpt / tag / "trainer_state.json").read_text())


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    out = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    out["__images__"] = acc.Tags()["images"]
    out["__histograms__"] = acc.Tags()["histograms"]
    return out


def _where(policy_dir: Path) -> list[str]:
    """The flags every run here shares: the policy, and outputs/logs under the cwd."""
    return ["--model", str(policy_dir), "--output_dir", "out", "--log_dir", "runs"]


def _comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.startswith("perf/")} for h in history]
