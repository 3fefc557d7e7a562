"""Reliability of a run's state: damaged checkpoints, unusable golds, resumed TensorBoard logs.

* Checkpoints and the export carry a manifest (sizes, CRC-32) checked on load: flipped bytes,
  truncated, empty or missing files fail with a message naming the file and the fallback, and
  ``--resume auto`` past a broken ``latest`` falls back to the newest complete checkpoint.
  Fast tests use a file-based fake engine (as in ``test_publish.py``), one test two real
  ``gloo`` ranks, the real trainer through ``scripts/train.py`` in
  ``tests/e2e/test_reliability_state_e2e.py``.
* Golds that math-verify cannot parse are counted at start-up (abort above
  ``max_bad_gold_frac``), and a run whose answers fail to grade for ``grading_error_patience``
  steps stops after a checkpoint.
* A resumed run's TensorBoard writer purges the steps it re-runs: each step is logged once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.run_state import BAD_GOLDS, _events, _flip, _jsonl

from strace_ds.config import TrainConfig
from strace_ds.storage import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[3]
TESTS = Path(__file__).resolve().parent
WEIGHTS = "zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
MODEL = "mp_rank_00_model_states.pt"
# --------------------------------------------------------------------------- fake engine


class _Engine:
    """What ``save_checkpoint`` / ``load_checkpoint`` use of a DeepSpeed engine, on files.

    Like ZeRO, each rank writes its own fp32 weights + optimizer file (binary float32) and rank
    0 the model-states file; loading reads the floats back without any check of its own, so a
    flipped byte loads silently, as it did with the real engine.
    """

    def __init__(self, step: int = 0, rank: int = 0, n: int = 4096) -> None:
        self.rank = rank
        self.weights = np.full(n, float(step), dtype=np.float32)
        self.loaded: np.ndarray | None = None

    def save_checkpoint(self, save_dir: str, tag: str, save_latest: bool) -> None:
        assert not save_latest
        out = Path(save_dir) / tag
        out.mkdir(parents=True, exist_ok=True)
        optimizer = np.concatenate([self.weights, self.weights * 0.5, self.weights * 0.25])
        (out / WEIGHTS.format(rank=self.rank)).write_bytes(optimizer.tobytes())
        if self.rank == 0:
            (out / MODEL).write_bytes(self.weights.astype(np.float16).tobytes())
        (Path(save_dir) / "zero_to_fp32.py").write_text("# helper\n")

    def load_checkpoint(self, load_dir: str, tag: str) -> tuple[str, dict]:
        out = Path(load_dir) / tag
        optimizer = np.frombuffer((out / WEIGHTS.format(rank=self.rank)).read_bytes(), np.float32)
        self.loaded = optimizer[: len(optimizer) // 3].copy()
        return str(out), {}


def _save(ckpt_dir: Path, step: int, keep_last: int = 3) -> Path:
    state = ckpt.TrainerState(step=step, history=[{"reward/mean": float(step)}])
    return ckpt.save_checkpoint(_Engine(step), ckpt_dir, state, keep_last)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _delete(path: Path) -> None:
    path.unlink()


@pytest.fixture(autouse=True)
def keep_rng() -> Iterator[None]:
    """``load_checkpoint`` restores RNG states; leave this process's as they were."""
    saved = ckpt.capture_rng()
    yield
    ckpt.restore_rng(saved)


@pytest.fixture
def two_checkpoints(tmp_path: Path) -> Path:
    ckpt_dir = tmp_path / "checkpoints"
    _save(ckpt_dir, 1)
    _save(ckpt_dir, 2)
    assert (ckpt_dir / "latest").read_text() == "step_000002"
    return ckpt_dir


# --------------------------------------------------------------------------- checkpoints


def test_every_checkpoint_has_a_manifest_of_its_files(two_checkpoints: Path) -> None:
    from strace_ds.storage.manifest import MANIFEST, check_manifest

    for tag in ("step_000001", "step_000002"):
        path = two_checkpoints / tag
        listed = json.loads((path / MANIFEST).read_text())["files"]
        assert sorted(listed) == sorted([WEIGHTS.format(rank=0), MODEL, ckpt.STATE_FILE])
        for name, entry in listed.items():
            assert entry["size"] == (path / name).stat().st_size
        assert check_manifest(path) == []


def test_flipped_weights_fail_the_load_naming_the_file_and_the_fallback(
    two_checkpoints: Path,
) -> None:
    damaged = two_checkpoints / "step_000002"
    _flip(damaged / WEIGHTS.format(rank=0))
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(_Engine(), damaged)
    msg = str(err.value)
    assert WEIGHTS.format(rank=0) in msg and "damaged" in msg
    assert "step_000001" in msg  # the fallback: the newest complete checkpoint


DAMAGE = {
    "flipped-weights": (WEIGHTS.format(rank=0), _flip),
    "flipped-model": (MODEL, _flip),
    "truncated-weights": (WEIGHTS.format(rank=0), _truncate),
    "empty-weights": (WEIGHTS.format(rank=0), _empty),
    "missing-weights": (WEIGHTS.format(rank=0), _delete),
    "truncated-state": (ckpt.STATE_FILE, _truncate),
    "empty-state": (ckpt.STATE_FILE, _empty),
    "missing-state": (ckpt.STATE_FILE, _delete),
    "truncated-manifest": ("manifest.json", _truncate),
    "empty-manifest": ("manifest.json", _empty),
    "missing-manifest": ("manifest.json", _delete),
}


@pytest.mark.parametrize("what", list(DAMAGE))
def test_damaged_latest_fails_cleanly_and_auto_resume_falls_back(
    two_checkpoints: Path, what: str
) -> None:
    name, damage = DAMAGE[what]
    damaged = two_checkpoints / "step_000002"
    damage(damaged / name)
    # Loading the damaged checkpoint itself: our message, never EOFError/JSONDecodeError/...
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(_Engine(), damaged)
    assert name in str(err.value) and "step_000001" in str(err.value)
    # --resume auto: the newest complete checkpoint, said out loud.
    logged: list[str] = []
    found = ckpt.find_checkpoint("auto", two_checkpoints, log=logged.append)
    assert found == two_checkpoints / "step_000001"
    said = "\n".join(logged)
    assert "step_000002" in said and name in said and "falling back to" in said
    engine = _Engine()
    state = ckpt.load_checkpoint(engine, found)
    assert state.step == 1 and engine.loaded is not None and set(engine.loaded) == {1.0}
    # An explicit path to the damaged tag is an error naming the file and the fallback.
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.find_checkpoint(str(damaged), two_checkpoints)
    assert name in str(err.value) and "step_000001" in str(err.value)


@pytest.mark.parametrize("latest", ["empty", "garbage", "missing-tag", "deleted"])
def test_broken_latest_falls_back_to_the_newest_complete_checkpoint(
    two_checkpoints: Path, latest: str
) -> None:
    path = two_checkpoints / "latest"
    if latest == "empty":
        path.write_text("")
    elif latest == "garbage":
        path.write_bytes(os.urandom(64) + b"\xff\xfe")
    elif latest == "missing-tag":
        path.write_text("step_000007")
    else:
        path.unlink()
    for resume in ("auto", str(two_checkpoints)):  # a checkpoints root behaves like auto
        logged: list[str] = []
        found = ckpt.find_checkpoint(resume, two_checkpoints, log=logged.append)
        assert found == two_checkpoints / "step_000002", (resume, logged)
        assert "latest" in logged[0] and "falling back to" in logged[0], logged
        assert ckpt.load_checkpoint(_Engine(), found).step == 2


def test_no_checkpoint_at_all_is_a_fresh_start(tmp_path: Path) -> None:
    assert ckpt.find_checkpoint("auto", tmp_path / "checkpoints") is None
    (tmp_path / "checkpoints").mkdir()
    assert ckpt.find_checkpoint("auto", tmp_path / "checkpoints") is None


def test_every_checkpoint_damaged_is_an_error_listing_them(two_checkpoints: Path) -> None:
    _flip(two_checkpoints / "step_000002" / WEIGHTS.format(rank=0))
    _truncate(two_checkpoints / "step_000001" / ckpt.STATE_FILE)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.find_checkpoint("auto", two_checkpoints, log=lambda _: None)
    msg = str(err.value)
    assert "no complete checkpoint" in msg
    assert "step_000002" in msg and WEIGHTS.format(rank=0) in msg
    assert "step_000001" in msg and ckpt.STATE_FILE in msg


def test_the_next_save_after_a_fallback_replaces_the_damaged_tag(two_checkpoints: Path) -> None:
    _flip(two_checkpoints / "step_000002" / WEIGHTS.format(rank=0))
    found = ckpt.find_checkpoint("auto", two_checkpoints, log=lambda _: None)
    assert found is not None and found.name == "step_000001"
    _save(two_checkpoints, 2, keep_last=1)
    assert ckpt.find_checkpoint("auto", two_checkpoints) == two_checkpoints / "step_000002"
    assert sorted(p.name for p in two_checkpoints.iterdir() if p.name.startswith("step_")) == [
        "step_000002"
    ]


def test_a_checkpoint_without_manifest_says_how_to_trust_it(two_checkpoints: Path) -> None:
    from strace_ds.storage.manifest import main as manifest_cli

    legacy = two_checkpoints / "step_000002"
    (legacy / "manifest.json").unlink()
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(_Engine(), legacy)
    assert "python -m strace_ds.storage.manifest write" in str(err.value)
    assert manifest_cli(["write", str(legacy)]) == 0
    assert manifest_cli(["check", str(legacy)]) == 0
    assert ckpt.load_checkpoint(_Engine(), legacy).step == 2
    _flip(legacy / MODEL)
    assert manifest_cli(["check", str(legacy)]) == 1


_TWO_RANKS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch.distributed as dist
    rank, root, port, mode = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    sys.path.insert(0, sys.argv[5])
    import test_reliability_state as t
    from strace_ds.storage import checkpoint as ckpt
    if mode == "save":
        for step in (1, 2):
            state = ckpt.TrainerState(step=step)
            ckpt.save_checkpoint(t._Engine(step, rank=rank), root, state, keep_last=3)
    else:
        logged = []
        found = ckpt.find_checkpoint("auto", root, log=logged.append)
        engine = t._Engine(rank=rank)
        step = ckpt.load_checkpoint(engine, found, verify=False).step
        print(json.dumps({"found": found.name, "step": step, "logged": logged,
                          "loaded": sorted(set(engine.loaded.tolist()))}))
    dist.destroy_process_group()
    """
)


def _two_ranks(root: Path, mode: str) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
           "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TWO_RANKS, str(r), str(root), port, mode, str(TESTS)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, errs) in zip(procs, outs):
        assert p.returncode == 0, errs[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) if out.strip() else {} for out, _ in outs]


def test_two_ranks_manifest_covers_every_ranks_files(tmp_path: Path) -> None:
    from strace_ds.storage.manifest import MANIFEST, check_manifest

    root = tmp_path / "checkpoints"
    _two_ranks(root, "save")
    listed = json.loads((root / "step_000002" / MANIFEST).read_text())["files"]
    assert sorted(listed) == sorted(
        [WEIGHTS.format(rank=0), WEIGHTS.format(rank=1), MODEL, ckpt.STATE_FILE]
    )
    assert check_manifest(root / "step_000002") == []
    _flip(root / "step_000002" / WEIGHTS.format(rank=1))  # only rank 1's own file
    for got in _two_ranks(root, "find"):  # both ranks agree on the fallback
        assert got["found"] == "step_000001" and got["step"] == 1 and got["loaded"] == [1.0]
        assert WEIGHTS.format(rank=1) in "\n".join(got["logged"])


# --------------------------------------------------------------------------- golds


def test_unparseable_golds_are_exactly_those_the_grader_rejects() -> None:
    from strace_ds.data.loading import unparseable_golds
    from strace_ds.rewards.grading import grade_answer

    good = ["42", "\\frac{1}{2}", "x^2+1", "(1, 2)", "\\{1,2\\}", "3\\pi", "{", "a}{b", "1,000"]
    golds = good + BAD_GOLDS + ["42", "}{"]  # repeats are parsed once
    rejected = []
    for g in dict.fromkeys(golds):
        try:
            grade_answer("\\boxed{0}", g)
        except ValueError:
            rejected.append(g)
    assert rejected == BAD_GOLDS
    assert unparseable_golds(golds) == BAD_GOLDS


class _DataTrainer:
    """The trainer's data loading (``builders.load_train_data``), with what it said."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.logged: list[str] = []

    def _load_train_data(self):
        from strace_ds.train.setup import load_train_data

        return load_train_data(self.cfg.data, self.cfg.seed, self.cfg.max_bad_gold_frac,
                               log=self.logged.append)


def test_start_up_aborts_when_the_golds_do_not_parse(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "bad.jsonl", BAD_GOLDS * 2 + ["7", "8"])
    trainer = _DataTrainer(TrainConfig(dataset=str(data)))
    with pytest.raises(ValueError) as err:
        trainer._load_train_data()
    msg = str(err.value)
    assert "12 of 14" in msg and "max_bad_gold_frac" in msg and "'}{'" in msg


def test_start_up_reports_a_few_bad_golds_and_goes_on(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "some.jsonl", ["}{", "7", "8", "9"])
    trainer = _DataTrainer(TrainConfig(dataset=str(data)))
    loaded = trainer._load_train_data()
    assert len(loaded) == 4
    said = "\n".join(trainer.logged)
    assert "1 of 4" in said and "'}{'" in said
    strict = _DataTrainer(TrainConfig(dataset=str(data), max_bad_gold_frac=0.2))
    with pytest.raises(ValueError, match="1 of 4"):
        strict._load_train_data()


def test_new_reliability_fields_are_validated() -> None:
    cfg = TrainConfig()
    assert (cfg.max_bad_gold_frac, cfg.max_grading_error_frac, cfg.grading_error_patience) == (
        0.5, 0.5, 3)
    for bad in ({"max_bad_gold_frac": 1.5}, {"max_grading_error_frac": -0.1},
                {"grading_error_patience": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)


# --------------------------------------------------------------------------- grading errors


class _LoopTrainer:
    """A Trainer whose steps are scripted: ``errors[i]`` grading errors at step i + 1."""

    def __new__(cls, tmp_path: Path, errors: list[float], **overrides):
        from strace_ds.storage.run_identity import run_identity
        from strace_ds.train.loop import Trainer
        from strace_ds.train.monitor import METRICS_FILE, MetricsLog, Monitor

        cfg = TrainConfig(
            steps=len(errors), prompts_per_step=8, group_size=4, eval_every=-1,
            export=False, output_dir=str(tmp_path / "out"), **overrides,
        )

        class T(Trainer):
            def __init__(self) -> None:
                self.cfg, self.rank, self.world, self.is_main = cfg, 0, 1, True
                self.state = ckpt.TrainerState()
                self.eval_data = None
                self.ckpt_dir = cfg.run_dir / "checkpoints"
                self.monitor = Monitor(tmp_path / "runs", enabled=False)
                self.metrics_log = MetricsLog(cfg.run_dir / METRICS_FILE)
                self.identity = run_identity(cfg, 1)
                self.resume_from = self.find_resume()
                self.saved: list[int] = []
                self.logged: list[str] = []

            def _log(self, msg: str) -> None:
                self.logged.append(msg)

            def sync_weights(self, version: int) -> None:
                pass

            def train_step(self, step: int) -> dict[str, float]:
                self._last_grading_error = "ValueError: grade_answer: ... '}{' ..."
                return {"reward/mean": 0.0, "reward/errors": float(errors[step - 1])}

            def save(self) -> Path:
                self.saved.append(self.state.step)
                return self.ckpt_dir

        return T()


def test_a_run_on_ungradable_answers_stops_after_a_checkpoint(tmp_path: Path) -> None:
    from strace_ds.train.loop import RunAbortedError

    trainer = _LoopTrainer(tmp_path, [32.0] * 10)  # 32 rows a step, every one an error
    with pytest.raises(RunAbortedError) as err:
        trainer.train()
    assert trainer.state.step == 3 and trainer.saved == [3]
    msg = str(err.value)
    assert "3 consecutive steps" in msg and "max_grading_error_frac" in msg and "}{" in msg
    # metrics.jsonl holds the three steps the run made before it stopped
    from strace_ds.train.monitor import read_history

    rows = read_history(trainer.cfg.run_dir)
    assert [(r["step"], r["reward/errors"]) for r in rows] == [(1, 32.0), (2, 32.0), (3, 32.0)]


def test_grading_errors_must_be_consecutive_and_above_the_fraction(tmp_path: Path) -> None:
    errors = [32, 32, 10, 32, 32, 16, 32, 32]  # 16/32 = 0.5 is not above 0.5
    trainer = _LoopTrainer(tmp_path, errors)
    trainer.train()
    assert trainer.state.step == 8 and trainer.saved == [8]
    never = _LoopTrainer(tmp_path, [32.0] * 5, grading_error_patience=0)
    never.train()
    assert never.state.step == 5


def test_the_grading_error_streak_survives_a_resume(tmp_path: Path) -> None:
    from strace_ds.train.loop import RunAbortedError

    trainer = _LoopTrainer(tmp_path, [32.0] * 10)
    trainer.state.step = 2  # as restored from a checkpoint: two bad steps already
    trainer.state.history = [{"reward/errors": 32.0}, {"eval_step": 2.0}, {"reward/errors": 32.0}]
    with pytest.raises(RunAbortedError):
        trainer.train()
    assert trainer.state.step == 3 and trainer.saved == [3]


# --------------------------------------------------------------------------- TensorBoard


def _log_steps(monitor, steps, scale: float) -> None:
    for s in steps:
        monitor.scalars({"reward/mean": scale * s}, s)
        monitor.histogram("hist/advantages", torch.full((4,), scale * s), s)
    monitor.close()


def test_a_resumed_monitor_logs_each_step_once(tmp_path: Path) -> None:
    from strace_ds.train.monitor import Monitor

    _log_steps(Monitor(tmp_path / "plain"), range(1, 5), 1.0)
    _log_steps(Monitor(tmp_path / "plain"), range(3, 5), 10.0)  # re-run, no purge: twice
    scalars, _ = _events(tmp_path / "plain")
    assert [s for s, _ in scalars["reward/mean"]] == [1, 2, 3, 4, 3, 4]

    _log_steps(Monitor(tmp_path / "run"), range(1, 5), 1.0)  # killed after step 4 ...
    resumed = Monitor(tmp_path / "run")
    resumed.resume_after(2)  # ... resumed from the step-2 checkpoint
    _log_steps(resumed, range(3, 6), 10.0)
    scalars, hists = _events(tmp_path / "run")
    assert scalars["reward/mean"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]
    assert hists["hist/advantages"] == [1, 2, 3, 4, 5]


def test_a_disabled_monitor_writes_nothing(tmp_path: Path) -> None:
    from strace_ds.train.monitor import Monitor

    m = Monitor(tmp_path / "off", enabled=False)
    m.resume_after(3)
    _log_steps(m, [4], 1.0)
    assert not (tmp_path / "off").exists()
